"""Benchmark: `cmhash serve` under concurrent clients (load generated here, on 127.0.0.1).

Run after `dvc repro` in the project: it starts `cmhash serve` on a free port of 127.0.0.1, then for
each client count runs that many clients for ``--seconds`` seconds, each on its own keep-alive
connection, sending one request after another (text queries made of the dataset's label names,
or image queries: item thumbnails), and records every request's latency and status. It reports
requests per second, the 50th and 99th percentile latencies, the errors (any answer but 200, or a
failed connection) and the server's resident memory after each run; the client counts are run in
the order given, and ``--rounds`` repeats the whole list, so that memory growth across runs shows.

    python bench/search_load.py                                   # 1 and 20 clients, 30 s each, dcmht 64 bits
    python bench/search_load.py --clients 1 5 20 --seconds 10 --kind image

Writes bench/results/search_load.json (command, machine, every run). The clients share this
machine with the server: on 2 cores they take CPU from it, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import numpy as np
from machine import write_results
from serving import running_server


async def _client(base: str, make_request, until: float, results: list) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=1)) as client:
        while time.perf_counter() < until:
            method, url, kwargs = make_request()
            started = time.perf_counter()
            try:
                response = await client.request(method, url, **kwargs)
                status = response.status_code
            except Exception as err:  # the run records it as an error and goes on
                status = type(err).__name__
            results.append((time.perf_counter() - started, status))


async def _run(base: str, clients: int, seconds: float, make_request) -> dict:
    results: list = []
    started = time.perf_counter()
    await asyncio.gather(*(_client(base, make_request, started + seconds, results) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    latencies = np.array([latency for latency, _ in results]) * 1000
    errors = [status for _, status in results if status != 200]
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(results),
            "requests_per_second": round(len(results) / elapsed, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1), "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "errors": len(errors), "error_kinds": sorted({str(status) for status in errors})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the project, after dvc repro (default: .)")
    parser.add_argument("--method", default="dcmht")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=2, help="repeat the list of client counts (default: 2)")
    parser.add_argument("--kind", choices=("text", "image"), default="text")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search_load.json")
    args = parser.parse_args(argv)

    import httpx
    import psutil

    from cmhash.search.index_files import Items

    items = Items.read(args.root / "data" / "items")
    rng = random.Random(0)
    phrases = [f"a photo of a {name}" for name in items.label_names] + [f"a {a} and a {b}" for a in items.label_names[:6]
                                                                        for b in items.label_names[6:12]]
    thumbnails = [(args.root / "data" / "items" / "images" / f"{i}.jpg").read_bytes() for i in range(0, 200, 10)]

    def make_request():
        query = {"method": args.method, "bits": args.bits, "k": args.k}
        if args.kind == "text":
            return "GET", "/api/search", {"params": {**query, "text": rng.choice(phrases)}}
        return "POST", "/api/search", {"params": query, "content": rng.choice(thumbnails),
                                       "headers": {"Content-Type": "image/jpeg"}}

    with running_server(args.root) as (base, pid):
        method, url, kwargs = make_request()
        httpx.request(method, base + url, timeout=120, **kwargs).raise_for_status()  # load the index and the encoder
        process = psutil.Process(pid)
        runs = []
        for round_ in range(args.rounds):
            for clients in args.clients:
                run = asyncio.run(_run(base, clients, args.seconds, make_request))
                run.update({"round": round_ + 1, "server_rss_mb": round(process.memory_info().rss / 2**20, 1)})
                runs.append(run)
                print(f"round {round_ + 1}, {clients:3} clients: {run['requests_per_second']:7.1f} requests/s, p50 "
                      f"{run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, errors {run['errors']}, server "
                      f"{run['server_rss_mb']:.0f} MB", flush=True)
    write_results(args.out, index=f"{args.method}-{args.bits}", kind=args.kind, k=args.k, runs=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
