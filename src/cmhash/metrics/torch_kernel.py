"""The ranking statistics on a GPU with PyTorch: same inputs and outputs as ``kernel.scan_rankings``.

On a GPU a sort is cheap and a per-item scan is not, so this path does what the CPU kernel avoids:
Hamming distances as one matrix product of the {-1, +1} codes, a stable sort of each query's
distances (ties stay in retrieval index order), and cumulative sums over the ranked relevance. It
runs on any torch device; the tests run it on the CPU and compare it with the CPU kernel.
"""

from __future__ import annotations

import numpy as np

from cmhash.metrics.kernel import RankStatistics

ELEMENTS_PER_CHUNK = 2**25  # queries x retrieval items held at once: about 1.5 GB of GPU memory


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

    n = len(retrieval_words)
    ks, r_values = np.asarray(ks, dtype=np.int64), np.asarray(r_values, dtype=np.int64)
    # float16 products of +/-1 are exact and tensor cores sum them exactly in fp32; the CPU has no fp16 GEMM
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    retrieval = _unpack(retrieval_words, device, dtype) * 2 - 1
    retrieval_labels = _unpack(retrieval_label_words, device, dtype)
    width = retrieval.shape[1]  # padding bits are 0 in every code, so they only add to the inner product
    ranks = torch.arange(1, n + 1, device=device, dtype=torch.float64)
    parts = []
    chunk = max(1, ELEMENTS_PER_CHUNK // n)
    for start in range(0, len(query_words), chunk):
        query = _unpack(query_words[start:start + chunk], device, dtype) * 2 - 1
        query_labels = _unpack(query_label_words[start:start + chunk], device, dtype)
        distance = ((width - (query @ retrieval.T).float()) / 2).round().long()
        relevant = (query_labels @ retrieval_labels.T).float() > 0
        items_at = torch.zeros(len(query), bits + 1, dtype=torch.long, device=device)
        items_at.scatter_add_(1, distance, torch.ones_like(distance))
        relevant_at = torch.zeros_like(items_at).scatter_add_(1, distance, relevant.long())
        part = {"items_at": items_at, "relevant_at": relevant_at}
        if by_index:
            order = torch.sort(distance, dim=1, stable=True).indices
            ranked = relevant.gather(1, order)
            hits = ranked.long().cumsum(1)
            precision = torch.where(ranked, hits / ranks, 0.0)
            n_relevant = hits[:, -1:]
            part["precision_sum"] = torch.stack([precision[:, :k].sum(1) for k in ks], 1)
            part["relevant_in_top"] = torch.stack([hits[:, k - 1] for k in ks], 1)
            part["first_relevant_sum"] = torch.stack(
                [(precision * (hits <= torch.clamp(n_relevant, max=int(k)))).sum(1) for k in ks], 1)
            part["hits_at"] = (hits[:, r_values - 1] if len(r_values)
                               else torch.zeros(len(query), 0, dtype=torch.long, device=device))
        parts.append({name: value.cpu().numpy() for name, value in part.items()})
    return RankStatistics(**{name: np.concatenate([p[name] for p in parts]) for name in parts[0]})
