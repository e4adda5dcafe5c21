"""The Hamming top-k on a torch device (CUDA), the same results as the CPU kernel.

Codes are int64 words on the device; a distance is the popcount of XORed words, computed with the
bit-parallel (SWAR) sum since torch has no popcount; the top-k is ``topk`` of ``distance * N + id``
(so equal distances come in increasing id, as on the CPU). Queries go in chunks that keep the
(chunk x N) distance matrix within ``max_elements``. The CPU tests run this same code on torch's
CPU device.
"""

from __future__ import annotations

import numpy as np

_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def _popcount64(x):
    """Per-element popcount of an int64 tensor (two's complement bits)."""
    import torch

    m1, m2, m4, h01 = (torch.tensor(_signed(c), dtype=torch.int64, device=x.device) for c in (_M1, _M2, _M4, _H01))
    x = x - ((x >> 1) & m1)
    x = (x & m2) + ((x >> 2) & m2)
    x = (x + (x >> 4)) & m4
    return ((x * h01) >> 56) & 0xFF


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def top_k_torch(database, queries: np.ndarray, k: int, max_elements: int = 1 << 27):
    """(distances, ids) of the ``k`` nearest rows of ``database`` (an int64 tensor of words on the
    device) for each row of ``queries`` (uint64 words, numpy)."""
    import torch

    n = database.shape[0]
    query_words = torch.from_numpy(np.ascontiguousarray(queries).view(np.int64)).to(database.device)
    ids = torch.arange(n, device=database.device, dtype=torch.int64)
    chunk = max(1, max_elements // max(n * database.shape[1], 1))
    distances, found = [], []
    for start in range(0, len(query_words), chunk):
        block = query_words[start:start + chunk]
        distance = _popcount64(block[:, None, :] ^ database[None, :, :]).sum(-1)  # (chunk, n)
        keys = torch.topk(distance * n + ids, k, dim=1, largest=False, sorted=True).values
        distances.append(keys // n)
        found.append(keys % n)
    return torch.cat(distances).cpu().numpy(), torch.cat(found).cpu().numpy()
