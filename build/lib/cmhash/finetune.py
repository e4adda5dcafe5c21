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


def prefetched(batches: list, prepare, workers: int = 1):
    """Yield ``(batch, prepare(batch))`` in order, ``prepare`` running on the next ``workers``
    batches in background threads while the caller works on the current one (image decoding,
    resizing and tokenising release the GIL). With one worker ``prepare`` runs in batch order, so a
    seeded draw inside it stays reproducible; with none it runs in the caller's thread."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if workers < 1:
        for batch in batches:
            yield batch, prepare(batch)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        for batch in batches:
            pending.append((batch, pool.submit(prepare, batch)))
            if len(pending) > workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


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
