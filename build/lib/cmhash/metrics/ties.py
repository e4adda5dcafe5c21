"""Tie rule "average": the exact expected value of a metric over all orders of equally distant items.

Items at the same Hamming distance form a bucket; every order inside a bucket is taken as equally
likely, independently across buckets. Everything then follows from the per-distance counts (no
ranking at all), in O(K) per query for mAP@all and precision@R and O(K + k) for mAP@k:

- A bucket of ``c`` items, ``r`` of them relevant, after ``C`` items of which ``R`` are relevant:
  a position q in 1..c holds a relevant item with probability r/c, and then has on average
  ``1 + (q-1)(r-1)/(c-1)`` relevant items at or above it within the bucket, so

      E[sum of precision over its relevant items]
          = (r/c) sum_{q=1..c} [R + 1 + (q-1)(r-1)/(c-1)] / (C + q)
          = (r/c) [(R + 1) dH + (r-1)/(c-1) (c - (C + 1) dH)],   dH = H(C + c) - H(C)

  with H the harmonic numbers (McSherry & Najork, ECIR 2008, derive the same expectation).
- mAP@k divides by the relevant items in the top k, which is random when the k-th rank falls inside
  a bucket: the number m of relevant items among the s = k - C slots taken from it is hypergeometric,
  and given m they are spread uniformly over those s slots. The expectation is the exact mixture
  ``sum_m P(m) (S + S_m) / (R + m)`` with S the expected sum of the complete buckets above.
- Precision@R is linear in the hits, so its expectation is ``(R_before + s r / c) / R``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True)
def harmonic_numbers(n):
    """H(0..n) with compensated (Kahan) summation, so differences of large H stay accurate."""
    harmonic = np.zeros(n + 1)
    total, compensation = 0.0, 0.0
    for i in range(1, n + 1):
        term = 1.0 / i - compensation
        new_total = total + term
        compensation = (new_total - total) - term
        total = new_total
        harmonic[i] = total
    return harmonic


@njit(cache=True)
def _bucket_precision_sum(items_before, relevant_before, size, relevant, harmonic):
    """Expected sum of precision over the relevant items of a randomly ordered bucket."""
    if relevant == 0:
        return 0.0
    if size == 1:
        return (relevant_before + 1.0) / (items_before + 1.0)
    dh = harmonic[items_before + size] - harmonic[items_before]
    return relevant / size * ((relevant_before + 1.0) * dh
                              + (relevant - 1.0) / (size - 1.0) * (size - (items_before + 1.0) * dh))


@njit(cache=True)
def _log_choose(n, k):
    return math.lgamma(n + 1.0) - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0)


@njit(cache=True)
def _expected_ap(items_at, relevant_at, k, harmonic):
    """Expected AP of one query over the top k (k >= n: the whole list)."""
    items_before, relevant_before, complete = 0, 0, 0.0
    for d in range(items_at.shape[0]):
        size, relevant = items_at[d], relevant_at[d]
        if items_before + size <= k:
            complete += _bucket_precision_sum(items_before, relevant_before, size, relevant, harmonic)
            items_before += size
            relevant_before += relevant
            continue
        slots = k - items_before  # the k-th rank falls inside this bucket
        log_total = _log_choose(size, slots)
        expected = 0.0
        for m in range(max(0, slots - (size - relevant)), min(relevant, slots) + 1):
            if relevant_before + m == 0:
                continue
            probability = math.exp(_log_choose(relevant, m) + _log_choose(size - relevant, slots - m) - log_total)
            partial = _bucket_precision_sum(items_before, relevant_before, slots, m, harmonic)
            expected += probability * (complete + partial) / (relevant_before + m)
        return expected
    return complete / relevant_before if relevant_before > 0 else 0.0


@njit(parallel=True, cache=True)
def expected_average_precision(items_at, relevant_at, ks):
    """(q, len(ks)) expected AP per query at each depth k, from (q, K + 1) bucket counts."""
    n = items_at[0].sum() if items_at.shape[0] else 0
    harmonic = harmonic_numbers(n)
    out = np.zeros((items_at.shape[0], ks.shape[0]))
    for q in prange(items_at.shape[0]):
        for i in range(ks.shape[0]):
            out[q, i] = _expected_ap(items_at[q], relevant_at[q], min(ks[i], n), harmonic)
    return out


def expected_hits_at(items_at: np.ndarray, relevant_at: np.ndarray, r_values) -> np.ndarray:
    """(q, len(r_values)) expected relevant items among the top R (1 <= R <= n), from (q, K + 1) bucket counts."""
    items_cum = np.cumsum(items_at, axis=1)
    relevant_cum = np.cumsum(relevant_at, axis=1)
    rows = np.arange(len(items_at))
    out = np.zeros((len(items_at), len(r_values)))
    for i, r in enumerate(r_values):
        bucket = (items_cum < r).sum(axis=1)  # the bucket that holds rank R
        before_items = np.where(bucket > 0, items_cum[rows, bucket - 1], 0)
        before_relevant = np.where(bucket > 0, relevant_cum[rows, bucket - 1], 0)
        size = items_at[rows, bucket]
        out[:, i] = before_relevant + (r - before_items) * relevant_at[rows, bucket] / np.maximum(size, 1)
    return out
