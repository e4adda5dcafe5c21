"""Benchmark: the prepare stage on synthetic releases of the real sizes and layouts.

No real dataset is on the development machine, so this writes files with each release's real
layout and real counts - NUS-WIDE's 269,648-line image list, 81 concept files and 1k-tag matrix;
COCO 2017's 123,287 images with about 860k instances and 616k captions; MIRFlickr-25K's 25,000
images and tag files; a DCMH-style 20,015 x 224 x 224 x 3 v7.3 ``IAll`` - and times ``cmhash
prepare`` and then ``cmhash validate`` on each in a fresh process, recording wall times and the
peak memory of prepare (the process's VmHWM). Image files are
hard links to one small JPEG (the converters only check that files exist); DCMH's pixels are real
arrays, since the converter copies them.

    python bench/prepare_at_scale.py                          # all sources, full size
    python bench/prepare_at_scale.py --sources nuswide --scale 0.1

Writes bench/results/prepare_at_scale.json (command, machine, per-source seconds and peak RSS).
The synthetic files take about 5 GB under --work (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL = {"nuswide": 269_648, "coco": 123_287, "mirflickr25k": 25_000, "dcmh_mat": 20_015}


def _link_images(template: Path, paths: list[Path]) -> None:
    """Hard links to copies of ``template`` (a file system allows at most ~65,000 links per file)."""
    for i, path in enumerate(paths):
        if i % 50_000 == 0:
            source = template.with_name(f"{template.stem}-{path.parent.name}-{i}{template.suffix}")
            shutil.copyfile(template, source)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, path)


def _tag_rows(values: np.ndarray, separator: bytes) -> bytes:
    """Rows of 0/1 digits, each value followed by ``separator``, one row per line (AllTags1k.txt)."""
    n, width = values.shape
    out = np.empty((n, 2 * width + 1), dtype=np.uint8)
    out[:, 0:-1:2] = values + ord("0")
    out[:, 1:-1:2] = separator[0]
    out[:, -1] = ord("\n")
    return out.tobytes()


def make_nuswide(root: Path, n: int, template: Path, rng: np.random.Generator) -> dict:
    folders = [f"concept{c:02d}" for c in range(81)]
    names = [(folders[i % 81], f"{i:04d}_{10_000_000 + i}.jpg") for i in range(n)]
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList/Imagelist.txt").write_text("".join(f"C:\\ImageData\\Flickr\\{f}\\{m}\r\n" for f, m in names))
    _link_images(template, [root / "Flickr" / f / m for f, m in names])
    (root / "Groundtruth/AllLabels").mkdir(parents=True)
    frequency = 0.25 / np.arange(1, 82) ** 0.6  # a few frequent concepts, a long tail
    for c, name in enumerate(folders):
        digits = np.where(rng.random(n) < frequency[c], ord("1"), ord("0")).astype(np.uint8)
        (root / f"Groundtruth/AllLabels/Labels_{name}.txt").write_bytes(np.stack([digits, np.full(n, ord("\n"), np.uint8)], axis=1).tobytes())
    (root / "NUS_WID_Tags").mkdir()
    (root / "NUS_WID_Tags/TagList1k.txt").write_text("".join(f"tag{i}\n" for i in range(1000)))
    with (root / "NUS_WID_Tags/AllTags1k.txt").open("wb") as handle:
        for start in range(0, n, 20_000):
            rows = min(20_000, n - start)
            handle.write(_tag_rows((rng.random((rows, 1000)) < 0.006).astype(np.uint8), b"\t"))
    return {"name": "nuswide", "root": str(root), "split": "dcmh", "nuswide": {"concepts": 21}}


def make_coco(root: Path, n: int, template: Path, rng: np.random.Generator) -> dict:
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": c, "name": f"category{c}", "supercategory": "thing"} for c in range(1, 81)]
    next_id, image_id = 1, 1
    for subset, count in (("train", n - n * 5000 // 123_287), ("val", n * 5000 // 123_287)):
        images, instances, captions = [], [], []
        for _ in range(count):
            name = f"{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": name, "height": 480, "width": 640})
            for category in ([] if rng.random() < 0.009 else rng.integers(1, 81, rng.integers(1, 14)).tolist()):
                instances.append({"id": next_id, "image_id": image_id, "category_id": category, "iscrowd": 0,
                                  "area": 100.0, "bbox": [1, 2, 30, 40], "segmentation": [[1, 2, 31, 2, 31, 42, 1, 42]]})
                next_id += 1
            for k in range(5):
                captions.append({"id": next_id, "image_id": image_id, "caption": f"A person doing thing {k} near object {image_id}."})
                next_id += 1
            image_id += 1
        (root / f"annotations/instances_{subset}2017.json").write_text(json.dumps({"images": images, "annotations": instances, "categories": categories}))
        (root / f"annotations/captions_{subset}2017.json").write_text(json.dumps({"images": images, "annotations": captions}))
        _link_images(template, [root / f"{subset}2017" / image["file_name"] for image in images])
    return {"name": "coco", "root": str(root), "split": "dcmht", "coco": {"year": 2017}}


def make_mirflickr(root: Path, n: int, template: Path, rng: np.random.Generator) -> dict:
    (root / "mirflickr/meta/tags").mkdir(parents=True)
    _link_images(template, [root / f"mirflickr/im{i}.jpg" for i in range(1, n + 1)])
    words = [f"word{i}" for i in range(8000)]
    popularity = 1.0 / np.arange(1, 8001)
    for i in range(1, n + 1):
        tags = rng.choice(8000, rng.integers(0, 15), p=popularity / popularity.sum())
        (root / f"mirflickr/meta/tags/tags{i}.txt").write_text("".join(f"{words[t]}\r\n" for t in tags))
    annotations = root / "mirflickr25k_annotations_v080"
    annotations.mkdir()
    for c in range(24):
        members = np.flatnonzero(rng.random(n) < 0.12) + 1
        (annotations / f"concept{c:02d}.txt").write_text("".join(f"{m}\n" for m in members))
        (annotations / f"concept{c:02d}_r1.txt").write_text("".join(f"{m}\n" for m in members[::3]))
    return {"name": "mirflickr25k", "root": str(root), "split": "dcmh"}


def make_dcmh_mat(root: Path, n: int, template: Path, rng: np.random.Generator) -> dict:
    import h5py

    root.mkdir(parents=True)
    with h5py.File(root / "bench-iall.mat", "w", userblock_size=512) as f:  # as MATLAB: (N, 3, W, H) in HDF5
        images = f.create_dataset("IAll", shape=(n, 3, 224, 224), dtype=np.uint8, chunks=(1, 3, 224, 224))
        for start in range(0, n, 500):
            rows = min(500, n - start)
            # photo-like: smooth at 4x4 pixels, plus sensor noise (gzip keeps about 60 % of it, like photos)
            coarse = rng.integers(0, 248, (rows, 3, 56, 56), dtype=np.uint8).repeat(4, axis=2).repeat(4, axis=3)
            images[start : start + rows] = coarse + rng.integers(0, 8, coarse.shape, dtype=np.uint8)
    with h5py.File(root / "bench-lall.mat", "w", userblock_size=512) as f:
        labels = (rng.random((n, 24)) < 0.15).astype(np.float64)
        labels[np.arange(n), rng.integers(0, 24, n)] = 1
        f["LAll"] = labels.T
    with h5py.File(root / "bench-yall.mat", "w", userblock_size=512) as f:
        f["YAll"] = (rng.random((n, 1386)) < 0.01).astype(np.float64).T
    return {"name": "dcmh_mat", "root": str(root), "split": "dcmh", "dcmh_mat": {"prefix": "bench"}}


MAKERS = {"nuswide": make_nuswide, "coco": make_coco, "mirflickr25k": make_mirflickr, "dcmh_mat": make_dcmh_mat}

CHILD = """
import json, sys, time
from pathlib import Path
from cmhash.pipeline import stages
from cmhash.errors import ValidationFailed
from cmhash.pipeline.layout import Layout
params = {"dataset": json.loads(sys.argv[1])}
layout = Layout(Path(sys.argv[2]))
started = time.perf_counter()
stages.prepare.run(params, layout, progress=False)
prepared = time.perf_counter()
# VmHWM: the peak of this process's own memory (ru_maxrss would include the parent's, at fork)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
try:
    failed = stages.validate.run(params, layout)["failed"]
except ValidationFailed as err:  # recorded, not fatal: small --scale runs have too few items per label
    failed = [line.strip() for line in str(err).splitlines()[1:-1]]  # the failed expectations
print(json.dumps({"seconds": round(prepared - started, 1), "peak_rss_mb": round(peak_kb / 1024),
                  "validate_seconds": round(time.perf_counter() - prepared, 1), "validate_failed": failed}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", choices=sorted(MAKERS), default=sorted(MAKERS))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real item counts")
    parser.add_argument("--work", type=Path, default=None, help="where to write the synthetic files")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prepare_at_scale.json")
    args = parser.parse_args()
    from PIL import Image

    work = args.work or Path(tempfile.mkdtemp(prefix="cmhash-bench-"))
    template = work / "template.jpg"
    work.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (120, 80, 40)).save(template)
    results = {}
    try:
        for source in args.sources:
            n = max(100, int(FULL[source] * args.scale))
            started = time.perf_counter()
            dataset = MAKERS[source](work / source, n, template, np.random.default_rng(0))
            dataset["seed"] = 0
            if args.scale < 1:  # the named protocols' sizes need the full counts
                dataset["split"] = {"query": 20, "train": 50}
            made = time.perf_counter() - started
            run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(dataset), str(work / f"{source}-project")],
                                 capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(f"{source}: prepare failed:\n{run.stderr}")
            measured = json.loads(run.stdout.strip().splitlines()[-1])
            prepared = work / f"{source}-project/data/prepared/{source}.h5"
            results[source] = {"source_items": n, "synthetic_files_seconds": round(made, 1), **measured,
                               "prepared_mb": round(prepared.stat().st_size / 2**20, 1)}
            print(source, results[source], flush=True)
            shutil.rmtree(work / source)
            shutil.rmtree(work / f"{source}-project")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "machine": {
        "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
