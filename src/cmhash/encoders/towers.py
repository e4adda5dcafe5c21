"""Running an encoder's towers well: fp16 autocast on CUDA, and preparing the next batch while this
one runs. The encoders, encoding a dataset and DCMHT's fine-tuning share it.
"""

from __future__ import annotations


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
