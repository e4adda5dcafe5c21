"""The machinery of running a CLIP model's towers well: fp16 autocast on CUDA, the learning-rate
schedule of fine-tuning, and preparing the next batch while this one runs. DCMHT's fine-tuning and
the open_clip encoder share it.
"""

from __future__ import annotations

import math


def autocast(device: str):
    """fp16 autocast on CUDA; a no-op context on the CPU."""
    import torch

    cuda = device.startswith("cuda")
    return torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.float16, enabled=cuda)


def prefetched(batches: list, prepare):
    """Yield ``(batch, prepare(batch))`` in order, preparing the next batch in a background thread
    while the caller works on the current one (image decoding and preprocessing release the GIL).
    One worker, so ``prepare`` runs in batch order and a seeded draw inside it stays reproducible."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for batch in batches:
            future = pool.submit(prepare, batch)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (batch, future)
        if pending is not None:
            yield pending[0], pending[1].result()


def warmup_cosine(total_steps: int, warmup: float):
    """The learning-rate factor at each step: linear from 0 to 1 over the first ``warmup`` share of
    the steps, then a cosine decay to 0 (DCMHT's schedule)."""
    warmup_steps = max(1, int(round(warmup * total_steps)))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
