"""Benchmark: how fast the encode stage turns images and captions into features.

For each encoder (the offline pair; open_clip ViT-B-32 with random weights, which cost the same as
trained ones) and each source of images (pixels stored in a prepared file; JPEG files on disk, as
for MIRFlickr, NUS-WIDE, MS-COCO or your own data), it times the encode stage's own loop: batches
read, decoded and preprocessed by ``loaders`` threads (0: in the model's thread, as before the
pipeline existed) while the model embeds the current batch. On CUDA it also times the stored
pixels copied as uint8 and resized and normalised on the GPU, and JPEG files decoded on the GPU
(nvJPEG through torchvision's ``decode_jpeg``; the loader threads only read the files), resized and
normalised there. Images per second and captions per
second, the best of ``--repeats`` runs after a warm-up batch. CUDA is used when present.

    python bench/encode_throughput.py                       # -> bench/results/encode_throughput.json
    python bench/encode_throughput.py --images 256 --encoders offline

The results file records the command, the machine and every figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from machine import write_results


def make_sources(folder: Path, n: int, image_size: int) -> dict[str, Path]:
    """A prepared file holding the built-in dataset's pixels, and one pointing at the same images
    as JPEG files."""
    from PIL import Image

    from cmhash.datasets.builtin import generate_builtin
    from cmhash.datasets.prepared import write_prepared

    data = generate_builtin(n, image_size, seed=0, progress=False)
    common = dict(labels=data["labels"], label_names=data["label_names"], texts=data["captions"], text_item=np.arange(n),
                  splits={"query": np.arange(0), "retrieval": np.arange(n), "train": np.arange(0)}, source="bench",
                  params={})
    write_prepared(folder / "pixels.h5", images=data["images"], **common)
    (folder / "jpeg").mkdir()
    for i, pixels in enumerate(data["images"]):
        Image.fromarray(pixels).resize((256, 256)).save(folder / "jpeg" / f"{i}.jpg", quality=90)
    write_prepared(folder / "jpeg.h5", image_paths=[f"{i}.jpg" for i in range(n)], image_root=str(folder / "jpeg"), **common)
    return {"pixels": folder / "pixels.h5", "jpeg": folder / "jpeg.h5"}


def items_per_second(batches: list, prepare, embed, items: int, loaders: int, repeats: int) -> float:
    """The encode stage's loop: ``loaders`` threads run ``prepare`` on the next batches while the
    model thread runs ``embed`` on this one; items per second, the best of ``repeats`` passes after
    a warm-up batch."""
    from cmhash.encoders.towers import prefetched

    embed(prepare(batches[0]))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _, prepared in prefetched(batches, prepare, workers=loaders):
            embed(prepared)
        best = min(best, time.perf_counter() - started)
    return items / best


def _row_batches(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def images_per_second(encoder, prepared: Path, batch_size: int, loaders: int, repeats: int) -> float:
    """Images read, decoded and preprocessed on the CPU (PIL), as the encode stage does without a GPU."""
    from cmhash.datasets.prepared import PreparedData

    with PreparedData(prepared) as data:
        return items_per_second(_row_batches(data.n_items, batch_size), lambda rows: encoder.prepare_images(data.load_images(rows)),
                                encoder.embed_images, data.n_items, loaders, repeats)


def jpegs_decoded_on_device_per_second(encoder, prepared: Path, batch_size: int, loaders: int, repeats: int) -> float:
    """JPEG files read by the loader threads and decoded, resized and normalised on the device
    (nvJPEG on CUDA), then embedded: the encoder's ``prepare_jpegs`` / ``embed_jpegs``."""
    from cmhash.datasets.prepared import PreparedData

    with PreparedData(prepared) as data:
        paths = [data.image_root / path for path in data.image_paths]
    batches = [paths[start:start + batch_size] for start in range(0, len(paths), batch_size)]
    return items_per_second(batches, lambda batch: encoder.prepare_jpegs([path.read_bytes() for path in batch]),
                            encoder.embed_jpegs, len(paths), loaders, repeats)


def pixels_preprocessed_on_device_per_second(encoder, prepared: Path, batch_size: int, loaders: int, repeats: int) -> float:
    """Stored pixels read by the loader threads as uint8 arrays, resized and normalised on the device,
    then embedded: the encoder's ``prepare_pixels`` / ``embed_pixels``."""
    from cmhash.datasets.prepared import PreparedData

    with PreparedData(prepared) as data:
        pixels = data.images[()]
    return items_per_second(_row_batches(len(pixels), batch_size), lambda rows: encoder.prepare_pixels(pixels[rows[0]:rows[-1] + 1]),
                            encoder.embed_pixels, len(pixels), loaders, repeats)


def texts_per_second(encoder, prepared: Path, batch_size: int, loaders: int, repeats: int) -> float:
    from cmhash.datasets.prepared import PreparedData

    with PreparedData(prepared) as data:
        texts = data.texts
    batches = [texts[start:start + batch_size] for start in range(0, len(texts), batch_size)]
    return items_per_second(batches, encoder.prepare_texts, encoder.embed_texts, len(texts), loaders, repeats)


def scaling(prepared: Path, spec, batch_size: int | None, workers: list[int], folder: Path) -> list[dict]:
    """The whole encode stage on 1, 2, ... local Dask workers (shards of 4 batches), items per second."""
    from cmhash.encoders import build_encoder
    from cmhash.encoders.batch_size import resolve_batch_size
    from cmhash.encoders.dataset import encode_dataset

    encoder = build_encoder(spec)
    batch_size = batch_size or resolve_batch_size("auto", encoder)
    rows = []
    for count in workers:
        out = folder / f"features-{count}.h5"
        started = time.perf_counter()
        encode_dataset(prepared, out, encoder, batch_size=batch_size, progress=False, text="captions",
                       shard_items=4 * batch_size, workers=count, spec=spec)
        seconds = time.perf_counter() - started
        with h5py.File(out, "r") as f:
            items = f["images"].shape[0]
        rows.append({"encoder": "offline", "device": spec.device, "input": "encode stage on Dask (images and captions)",
                     "dask_workers": count, "batch_size": batch_size, "per_second": round(items / seconds, 1),
                     "seconds": round(seconds, 1)})
        print(f"encode stage on {count} Dask worker(s): {items / seconds:.1f} items/s ({seconds:.1f} s, cluster start included)",
              flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="items (images and captions) per source")
    parser.add_argument("--encoders", nargs="+", default=["offline", "vit-b-32"], choices=["offline", "vit-b-32"])
    parser.add_argument("--loaders", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the encode stage's batch_size auto (64 on the CPU, from free memory on CUDA)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dask-workers", type=int, nargs="*", default=[1, 2],
                        help="also time the whole encode stage (images and captions, offline pair) on a local Dask "
                             "cluster of this many workers")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "encode_throughput.json")
    args = parser.parse_args(argv)

    import torch

    from cmhash.encoders import EncoderSpec, build_encoder
    from cmhash.encoders.batch_size import resolve_batch_size

    device = "cuda" if torch.cuda.is_available() else "cpu"
    specs = {"offline": EncoderSpec("offline", device, {"image_size": 96}),
             "vit-b-32": EncoderSpec("open_clip", device, {"model": "ViT-B-32", "pretrained": None, "model_config": None})}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        sources = make_sources(Path(folder), args.images, 96)
        for name in args.encoders:
            encoder = build_encoder(specs[name])
            batch_size = args.batch_size or resolve_batch_size("auto", encoder)
            for loaders in args.loaders:
                for source, prepared in sources.items():
                    rate = images_per_second(encoder, prepared, batch_size, loaders, args.repeats)
                    rows.append({"encoder": name, "device": device, "input": f"images from {source}", "loaders": loaders,
                                 "batch_size": batch_size, "per_second": round(rate, 1)})
                    print(f"{name:9} {device}: images from {source:6}, loaders {loaders}: {rate:8.1f} images/s", flush=True)
                if device == "cuda":
                    rate = pixels_preprocessed_on_device_per_second(encoder, sources["pixels"], batch_size, loaders, args.repeats)
                    rows.append({"encoder": name, "device": device, "input": "images from pixels, preprocessed on the GPU",
                                 "loaders": loaders, "batch_size": batch_size, "per_second": round(rate, 1)})
                    print(f"{name:9} {device}: images from pixels preprocessed on the GPU, loaders {loaders}: {rate:8.1f} images/s",
                          flush=True)
                    rate = jpegs_decoded_on_device_per_second(encoder, sources["jpeg"], batch_size, loaders, args.repeats)
                    rows.append({"encoder": name, "device": device, "input": "images from jpeg, decoded on the GPU (nvJPEG)",
                                 "loaders": loaders, "batch_size": batch_size, "per_second": round(rate, 1)})
                    print(f"{name:9} {device}: images from jpeg decoded on the GPU, loaders {loaders}: {rate:8.1f} images/s",
                          flush=True)
                rate = texts_per_second(encoder, sources["pixels"], batch_size, loaders, args.repeats)
                rows.append({"encoder": name, "device": device, "input": "captions", "loaders": loaders,
                             "batch_size": batch_size, "per_second": round(rate, 1)})
                print(f"{name:9} {device}: captions,            loaders {loaders}: {rate:8.1f} captions/s", flush=True)
        rows += scaling(sources["pixels"], specs["offline"], args.batch_size, args.dask_workers, Path(folder))
    write_results(args.out, torch=torch.__version__, threads=torch.get_num_threads(), results=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
