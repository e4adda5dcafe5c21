"""``encode.batch_size: auto``: the batch size an encoder gets when none is set.

On the CPU a larger batch buys nothing (the cores are busy at 64) and 64 keeps the features file
byte-identical to the one earlier versions wrote. On CUDA the batch is as large as free memory
allows: one probe batch of each modality measures the memory a single item takes at its peak, and
the batch is the largest power of two whose items fit in ``HEADROOM`` of the free memory (the rest
is left to the loader's pinned buffers, the allocator's fragmentation and other processes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from cmhash.encoders import Encoder

CPU_BATCH = 64
PROBE_BATCH = 16
HEADROOM = 0.6
SMALLEST, LARGEST = 32, 4096  # beyond 4096 images per call a GPU gains no throughput, only latency


def resolve_batch_size(requested: int | str, encoder: Encoder) -> int:
    """``requested`` when it is a number; for ``"auto"``, what suits the encoder's device."""
    if requested != "auto":
        return int(requested)
    device = encoder.device
    if not device.startswith("cuda"):
        return CPU_BATCH
    import torch

    free_bytes, _ = torch.cuda.mem_get_info(torch.device(device))
    return batch_size_for_memory(free_bytes, _peak_bytes_per_item(encoder, torch, device))


def batch_size_for_memory(free_bytes: int, bytes_per_item: float) -> int:
    """The largest power of two of items that fit in ``HEADROOM`` of ``free_bytes``, within bounds."""
    fits = HEADROOM * free_bytes / max(bytes_per_item, 1.0)
    batch = SMALLEST
    while batch * 2 <= min(fits, LARGEST):
        batch *= 2
    return batch


def _peak_bytes_per_item(encoder: Encoder, torch, device: str) -> float:
    """Peak memory above the model's own for one item, the larger of an image's and a caption's."""
    images = [Image.new("RGB", (224, 224), (127, 127, 127))] * PROBE_BATCH
    texts = ["a probe caption of an ordinary length, about as long as the captions of a dataset"] * PROBE_BATCH
    per_item = 0.0
    for embed, batch in ((encoder.embed_images, encoder.prepare_images(images)),
                         (encoder.embed_texts, encoder.prepare_texts(texts))):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        embed(batch)
        torch.cuda.synchronize(device)
        per_item = max(per_item, (torch.cuda.max_memory_allocated(device) - before) / PROBE_BATCH)
    return per_item
