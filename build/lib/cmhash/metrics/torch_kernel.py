"""The ranking statistics on a GPU with PyTorch: same inputs and outputs as ``kernel.scan_rankings``.

On a GPU a sort is cheap and a per-item scan is not, so this path does what the CPU kernel avoids:
Hamming distances as one matrix product of the {-1, +1} codes, a stable sort of each query's
distances (ties stay in retrieval index order), and cumulative sums over the ranked relevance.
Everything else is read off those sums: the counts per distance at the bucket edges of the sorted
distances, precision sums at depth k from the cumulative precision. Distances are uint8, which the
GPU's radix sort orders in one pass (an int64 sort took 6x as long on an H100; bench/README.md).
It runs on any torch device; the tests run it on the CPU and compare it with the CPU kernel.
"""

from __future__ import annotations

import numpy as np

from cmhash.metrics.kernel import MAX_BITS, RankStatistics

ELEMENTS_PER_CHUNK = 2**25  # queries x retrieval items held at once: about 2.5 GB of GPU memory


def _unpack(words: np.ndarray, device, dtype):
    """uint64 words -> (n, 64 * W) tensor of 0/1 bits."""
    import torch

    as_int = torch.from_numpy(np.ascontiguousarray(words).view(np.int64)).to(device)
    shifts = torch.arange(64, device=device)
    return ((as_int.unsqueeze(-1) >> shifts) & 1).reshape(len(words), -1).to(dtype)


def scan_rankings_torch(query_words, retrieval_words, query_label_words, retrieval_label_words, bits: int,
                        ks, r_values, by_index: bool, device) -> RankStatistics:
    """Rank statistics of every query (see ``kernel.RankStatistics``), computed with torch on ``device``;
    ``ks`` and ``r_values`` as for ``kernel.scan_rankings``."""
    import torch
    import torch.nn.functional as F

    if bits > MAX_BITS:
        raise ValueError(f"distances are held as uint8: codes of up to {MAX_BITS} bits (got {bits})")
    n = len(retrieval_words)
    ks = torch.as_tensor(np.asarray(ks, dtype=np.int64), device=device)
    r_values = torch.as_tensor(np.asarray(r_values, dtype=np.int64), device=device)
    # float16 products of +/-1 are exact (|b . b'| <= 256) and tensor cores sum them in fp32; the CPU
    # has no fp16 matrix product
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    retrieval = _unpack(retrieval_words, device, dtype) * 2 - 1
    retrieval_labels = _unpack(retrieval_label_words, device, dtype)
    width = retrieval.shape[1]  # padding bits are 0 in every code, so they only add to the inner product
    ranks = torch.arange(1, n + 1, device=device, dtype=torch.float64)
    distances = torch.arange(bits + 1, device=device, dtype=torch.uint8)
    parts = []
    chunk = max(1, ELEMENTS_PER_CHUNK // n)
    for start in range(0, len(query_words), chunk):
        query = _unpack(query_words[start:start + chunk], device, dtype) * 2 - 1
        query_labels = _unpack(query_label_words[start:start + chunk], device, dtype)
        distance = ((width - query @ retrieval.T) * 0.5).to(torch.uint8)
        relevant = (query_labels @ retrieval_labels.T) > 0
        sorted_distance, order = torch.sort(distance, dim=1, stable=True)
        ranked = relevant.gather(1, order)
        # hits[:, i]: relevant items in the top i, for i = 0..n
        hits = F.pad(ranked.cumsum(1), (1, 0))
        # edges[:, d]: items ranked before distance d (d = 0..K), then n
        edges = torch.searchsorted(sorted_distance, distances.expand(len(query), -1).contiguous())
        edges = torch.cat([edges, torch.full_like(edges[:, :1], n)], 1)
        part = {"items_at": edges.diff(1), "relevant_at": hits.gather(1, edges).diff(1)}
        if by_index:
            # precision_before[:, i]: sum of the precision at each relevant rank in the top i
            precision = torch.where(ranked, hits[:, 1:] / ranks, 0.0)
            precision_before = F.pad(precision.cumsum(1), (1, 0))
            # the first min(k, R) relevant items end at the rank where hits reaches that count
            counted = torch.minimum(ks, hits[:, -1:])
            last_counted = torch.searchsorted(hits, counted)
            part.update(precision_sum=precision_before[:, ks], relevant_in_top=hits[:, ks],
                        first_relevant_sum=precision_before.gather(1, last_counted), hits_at=hits[:, r_values])
        parts.append({name: value.cpu().numpy() for name, value in part.items()})
    return RankStatistics(**{name: np.concatenate([p[name] for p in parts]) for name in parts[0]})
