"""Seeded query / retrieval / train splits."""

from __future__ import annotations

import numpy as np

from cmhash.errors import CmhashError


def random_split(n_items: int, query: int, train: int, seed: int) -> dict[str, np.ndarray]:
    """Draw ``query`` items at random; the rest is the retrieval set; ``train`` items come from retrieval.

    Indices inside each split are sorted so that files are easy to read and compare.
    """
    if query <= 0 or train <= 0:
        raise CmhashError(f"dataset.split: query ({query}) and train ({train}) must be positive.")
    if query + train > n_items:
        raise CmhashError(
            f"dataset.split: query ({query}) + train ({train}) exceeds the {n_items} items; "
            "lower the split sizes or make the dataset larger."
        )
    order = np.random.default_rng(seed).permutation(n_items)
    query_idx = np.sort(order[:query])
    retrieval_idx = np.sort(order[query:])
    train_idx = np.sort(order[query : query + train])
    return {"query": query_idx, "retrieval": retrieval_idx, "train": train_idx}
