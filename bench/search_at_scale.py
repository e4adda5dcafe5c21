"""Benchmark: cmhash's HammingIndex against FAISS's IndexBinaryFlat, side by side, on the same codes.

For each database size and code length: random codes (the hardest case for a scan: nothing to
prune), both indexes built from the same packed bits, both given the same threads. Timed:

- one query at a time (the latency a search request sees): the median and the 95th percentile
  over ``--single-queries`` queries, each a separate ``search`` call;
- batches of ``--batch`` queries: queries per second;
- on a machine with CUDA, the same for the engine's torch path on the GPU (``device="cuda"``),
  whose answers must equal the CPU kernel's exactly.

Every timing is the fastest of ``--repeats`` runs after a warm-up (numba compiles or loads its
kernel once). The distances of both must be equal, query for query (FAISS orders ties its own way,
so ids are compared below the k-th distance only).

    python bench/search_at_scale.py                                  # 1M and 10M items, 64 and 128 bits
    python bench/search_at_scale.py --items 1000000 --bits 64        # one size
    NUMBA_NUM_THREADS=16 OMP_NUM_THREADS=16 python bench/search_at_scale.py --out bench/results/search_16cpu.json

Writes bench/results/search_at_scale.json: the command, the machine and every timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from machine import write_results


def random_packed_codes(n: int, bits: int, seed: int) -> np.ndarray:
    """(n, bits / 8) uint8: random bits, generated in slices so 10M items stay small in memory."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, bits // 8), np.uint8)
    for start in range(0, n, 1_000_000):
        out[start:start + 1_000_000] = rng.integers(0, 256, (min(1_000_000, n - start), bits // 8), dtype=np.uint8)
    return out


def fastest(function, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def single_query_latencies(search, queries: np.ndarray, k: int) -> dict:
    times = []
    for query in queries:
        started = time.perf_counter()
        search(query[None, :], k)
        times.append(time.perf_counter() - started)
    times = np.array(times) * 1000
    return {"median_ms": round(float(np.median(times)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3),
            "queries": len(times)}


def same_results(ours, theirs) -> bool:
    (our_d, our_i), (their_d, their_i) = ours, theirs
    if not np.array_equal(our_d, their_d):
        return False
    return all(set(our_i[q][our_d[q] < our_d[q, -1]]) == set(their_i[q][their_d[q] < their_d[q, -1]]) for q in range(len(our_d)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--batch", type=int, default=1000, help="queries per batch (default: 1000)")
    parser.add_argument("--faiss-batch-at-10m", type=int, default=200,
                        help="FAISS's batch at 10M items and more, to keep the run short (default: 200 queries)")
    parser.add_argument("--single-queries", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search_at_scale.json")
    args = parser.parse_args(argv)

    import faiss
    import numba
    import torch

    from cmhash.search import HammingIndex

    cuda = torch.cuda.is_available()

    threads = numba.get_num_threads()
    faiss.omp_set_num_threads(threads)  # the same threads for both
    rows = []
    for n in args.items:
        for bits in args.bits:
            database = random_packed_codes(n, bits, seed=n + bits)
            queries = random_packed_codes(args.batch, bits, seed=1)
            ours = HammingIndex(database, bits=bits)
            theirs = faiss.IndexBinaryFlat(bits)
            theirs.add(database)
            ours.search(queries[:2], 10)  # compile or load the kernels
            ours.search(queries[0], 10)
            for k in args.k:
                faiss_batch = args.batch if n < 10_000_000 else min(args.batch, args.faiss_batch_at_10m)
                our_seconds, our_result = fastest(lambda index=ours, k=k: index.search(queries, k), args.repeats)
                their_seconds, their_result = fastest(lambda index=theirs, k=k, b=faiss_batch: index.search(queries[:b], k),
                                                     args.repeats)
                agree = same_results((our_result[0][:faiss_batch], our_result[1][:faiss_batch]), their_result)
                row = {"items": n, "bits": bits, "k": k, "same_results": agree,
                       "batch": {"cmhash_qps": round(len(queries) / our_seconds, 1),
                                 "faiss_qps": round(faiss_batch / their_seconds, 1),
                                 "faiss_queries": faiss_batch},
                       "single": {"cmhash": single_query_latencies(ours.search, queries[:args.single_queries], k),
                                  "faiss": single_query_latencies(theirs.search, queries[:args.single_queries], k)}}
                row["batch"]["speedup"] = round(row["batch"]["cmhash_qps"] / row["batch"]["faiss_qps"], 2)
                row["single"]["speedup"] = round(row["single"]["faiss"]["median_ms"] / row["single"]["cmhash"]["median_ms"], 2)
                if cuda:  # the torch path on the GPU: the same answers as the CPU kernel, ties included
                    ours.search(queries[:2], k, device="cuda")  # the codes are copied to the GPU once
                    cuda_seconds, cuda_result = fastest(lambda index=ours, k=k: index.search(queries, k, device="cuda"),
                                                        args.repeats)
                    row["batch"]["cuda_qps"] = round(len(queries) / cuda_seconds, 1)
                    row["single"]["cuda"] = single_query_latencies(lambda q, k, index=ours: index.search(q, k, device="cuda"),
                                                                   queries[:args.single_queries], k)
                    row["cuda_equals_cpu"] = bool(np.array_equal(cuda_result[0], our_result[0])
                                                  and np.array_equal(cuda_result[1], our_result[1]))
                    print(f"{'':>10}   cuda: batch {row['batch']['cuda_qps']:>9,.0f} QPS; one query "
                          f"{row['single']['cuda']['median_ms']:.2f} ms; equal to the CPU kernel: {row['cuda_equals_cpu']}",
                          flush=True)
                rows.append(row)
                print(f"{n:>10,} x {bits:3} bits, k={k:3}: batch {row['batch']['cmhash_qps']:>9,.0f} QPS vs FAISS "
                      f"{row['batch']['faiss_qps']:>8,.0f} ({row['batch']['speedup']}x); one query "
                      f"{row['single']['cmhash']['median_ms']:.2f} ms vs {row['single']['faiss']['median_ms']:.2f} ms "
                      f"({row['single']['speedup']}x); same results: {agree}", flush=True)
            del database, ours, theirs
    write_results(args.out, faiss=faiss.__version__, threads=threads, torch=torch.__version__,
                  gpu=torch.cuda.get_device_name() if cuda else None, results=rows)
    return 0 if all(row["same_results"] and row.get("cuda_equals_cpu", True) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
