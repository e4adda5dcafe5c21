"""Benchmark: what one search costs in a running `cmhash serve`, end to end and by part.

Run after `dvc repro` in the project: it starts `cmhash serve` on a free port of 127.0.0.1, sends
text queries (phrases made of the dataset's label names) and image queries (item thumbnails) one
at a time over HTTP, and records, per query, the server's own timings (encode: text or image through
the encoder and the model's hash head; search: the Hamming top-k) and the HTTP round trip.

    python bench/search_latency.py                                # dcmht 64 bits, 50 + 50 queries
    python bench/search_latency.py --method djsrh --bits 128 --queries 100

Writes bench/results/search_latency.json (command, machine, medians and 95th percentiles).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from machine import write_results
from serving import running_server


def summarise(values: list[float]) -> dict:
    return {"median": round(float(np.median(values)), 3), "p95": round(float(np.percentile(values, 95)), 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="dcmht")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=50, help="text queries, and as many image queries")
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search_latency.json")
    args = parser.parse_args(argv)

    import httpx

    from cmhash.search.index_files import Items

    items = Items.read(args.root / "data" / "items")
    rng = np.random.default_rng(0)
    texts = [f"a photo of a {' and a '.join(rng.choice(items.label_names, rng.integers(1, 3), replace=False))}"
             for _ in range(args.queries)]
    images = [items.thumbnail(int(item)).read_bytes() for item in rng.choice(len(items), args.queries, replace=False)]

    with running_server(args.root) as (base, _):
        query = {"method": args.method, "bits": args.bits, "k": args.k}
        # one client for every query, as a browser keeps its connection (a new httpx client costs ~30 ms)
        client = httpx.Client(base_url=base)
        client.get("/api/search", params={**query, "text": "warm up"}, timeout=300).raise_for_status()  # loads models
        client.post("/api/search", params=query, content=images[0], timeout=300).raise_for_status()
        measured = {"text": {"encode": [], "search": [], "total": [], "http": []},
                    "image": {"encode": [], "search": [], "total": [], "http": []}}
        for kind, inputs in (("text", texts), ("image", images)):
            for value in inputs:
                started = time.perf_counter()
                response = (client.get("/api/search", params={**query, "text": value}, timeout=60) if kind == "text"
                            else client.post("/api/search", params=query, content=value, timeout=60))
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                timing = response.json()["milliseconds"]
                for part in ("encode", "search", "total"):
                    measured[kind][part].append(timing[part])
                measured[kind]["http"].append(elapsed)
    results = {kind: {part: summarise(values) for part, values in parts.items()} for kind, parts in measured.items()}
    info = json.loads((args.root / "data" / "index" / f"{args.method}-{args.bits}" / "index.json").read_text())
    write_results(args.out, index={"method": args.method, "bits": args.bits, "items": info["items"],
                                   "encoder": info["encoder"]["name"]}, queries=args.queries, k=args.k, milliseconds=results)
    for kind, parts in results.items():
        print(f"{kind:5} query: " + ", ".join(f"{part} {value['median']:.2f} ms (p95 {value['p95']:.2f})"
                                                for part, value in parts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
