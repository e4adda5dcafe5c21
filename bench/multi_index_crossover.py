"""Benchmark: where multi-index hashing overtakes the scan (cmhash.search, exact either way).

For growing numbers of random 64-bit codes: the time to build the multi-index tables, their memory,
and one-query latency (median over ``--queries`` separate calls) and batch throughput of
``MultiIndexHammingIndex`` against ``HammingIndex``'s scan, both checked to return the same answer.
Two kinds of codes: random ones, the hard case for multi-index hashing (the k-th distance is large,
so many buckets are probed), and clustered ones, shaped like a trained model's (items and queries
near one of ``--clusters`` centres, each bit flipped with probability ``--flip``), which favour it.

    python bench/multi_index_crossover.py          # -> bench/results/multi_index_crossover.json
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
from machine import write_results
from search_at_scale import fastest, random_packed_codes, single_query_latencies


def clustered_packed_codes(n: int, bits: int, seed: int, clusters: int, flip: float) -> np.ndarray:
    """(n, bits / 8) uint8: each item a random one of ``clusters`` fixed centres, each bit flipped
    with probability ``flip`` (in slices, so 10M items stay small in memory)."""
    centres = np.random.default_rng(0).integers(0, 2, (clusters, bits), dtype=np.uint8).astype(bool)
    rng = np.random.default_rng(seed)
    out = np.empty((n, bits // 8), np.uint8)
    for start in range(0, n, 1_000_000):
        count = min(1_000_000, n - start)
        noisy = centres[rng.integers(0, clusters, count)] ^ (rng.random((count, bits)) < flip)
        out[start:start + count] = np.packbits(noisy, axis=1)
    return out


def faiss_multi_hash(database: np.ndarray, queries: np.ndarray, bits: int, substrings: int, k: int,
                     exact_distances: np.ndarray, flips: list[int]) -> list[dict]:
    """FAISS's multi-index hashing (IndexBinaryMultiHash, ``substrings`` tables of bits / substrings
    bits) at each flip radius: batch QPS, and the share of queries given exactly the k nearest distances."""
    import faiss

    rows = []
    for flip in flips:
        index = faiss.IndexBinaryMultiHash(bits, substrings, bits // substrings)
        index.nflip = flip
        index.add(database)
        index.search(queries[:2], k)
        seconds, (distances, _) = fastest(lambda index=index: index.search(queries, k), 2)
        exact = float(np.mean([np.array_equal(np.sort(found), np.sort(want)) for found, want in zip(distances, exact_distances)]))
        rows.append({"nflip": flip, "batch_qps": round(len(queries) / seconds, 1), "exact_share": round(exact, 3)})
        print(f"  FAISS IndexBinaryMultiHash, nflip={flip}: batch {len(queries) / seconds:,.0f} QPS, "
              f"{exact:.0%} of queries with the exact k distances", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 300_000, 1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--codes", nargs="+", default=["random", "clustered"], choices=["random", "clustered"])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--faiss-flips", type=int, nargs="*", default=[],
                        help="also time FAISS's IndexBinaryMultiHash (same substrings) at these flip radii, and count "
                             "the queries whose k distances are the exact ones (its search stops at that radius)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "multi_index_crossover.json")
    args = parser.parse_args(argv)

    from cmhash.search import HammingIndex
    from cmhash.search.multi_index import MultiIndexHammingIndex

    rows = []
    for kind, n in ((kind, n) for kind in args.codes for n in args.items):
        make = random_packed_codes if kind == "random" else functools.partial(
            clustered_packed_codes, clusters=args.clusters, flip=args.flip)
        queries = make(max(args.queries, args.batch), args.bits, seed=3)
        database = make(n, args.bits, seed=n)
        scan = HammingIndex(database, bits=args.bits)
        started = time.perf_counter()
        multi = MultiIndexHammingIndex(database, bits=args.bits)
        build = time.perf_counter() - started
        table_bytes = multi.offsets.nbytes + multi.order.nbytes
        for k in args.k:
            scan.search(queries[:2], k), multi.search(queries[:2], k), scan.search(queries[0], k)  # compile / load
            same = all(np.array_equal(a, b) for a, b in zip(scan.search(queries[:20], k), multi.search(queries[:20], k)))
            scan_batch, _ = fastest(lambda index=scan, k=k: index.search(queries[:args.batch], k), 2)
            multi_batch, _ = fastest(lambda index=multi, k=k: index.search(queries[:args.batch], k), 2)
            row = {"codes": kind, "items": n, "bits": args.bits, "k": k, "substrings": multi.substrings, "same_results": same,
                   "build_seconds": round(build, 2), "table_megabytes": round(table_bytes / 2**20, 1),
                   "one_query_ms": {"scan": single_query_latencies(scan.search, queries[:args.queries], k)["median_ms"],
                                    "multi_index": single_query_latencies(multi.search, queries[:args.queries], k)["median_ms"]},
                   "batch_qps": {"scan": round(args.batch / scan_batch, 1), "multi_index": round(args.batch / multi_batch, 1)}}
            if args.faiss_flips:
                row["faiss_multi_hash"] = faiss_multi_hash(database, queries[:args.batch], args.bits, multi.substrings, k,
                                                           scan.search(queries[:args.batch], k)[0], args.faiss_flips)
            rows.append(row)
            print(f"{kind:9} {n:>10,} items, k={k:3}, m={multi.substrings}: one query scan {row['one_query_ms']['scan']:.2f} ms, "
                  f"multi-index {row['one_query_ms']['multi_index']:.2f} ms; batch scan {row['batch_qps']['scan']:,.0f} "
                  f"QPS, multi-index {row['batch_qps']['multi_index']:,.0f} QPS; build {build:.1f} s, "
                  f"{row['table_megabytes']} MB; same results: {same}", flush=True)
        del database, scan, multi
    write_results(args.out, results=rows)
    return 0 if all(row["same_results"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
