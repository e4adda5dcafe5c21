"""Benchmark: one training step of each deep method against a bare step of the same networks.

For each deep method, with its settings from params.yaml (its own layer sizes and batch size) and
features of the default pipeline's shapes (image 1280, text 384, the built-in dataset's labels), it
times on the CPU:

- **the method's step**: the method's own loss on a minibatch, backward, and its optimisers' step,
  as its fit runs them (for MESDCH, one step of each of its three networks, as an epoch interleaves
  them);
- **the bare step**: the same networks (built by the method itself, so the shapes are the method's),
  run forward as the method's codes are computed (its image and text outputs, or its pair output,
  and MESDCH's label network), on the same batch size and dtype, a trivial loss (the mean square of
  the outputs), backward and a step of the method's own optimisers (plain SGD for MESDCH, whose
  three optimisers are made inside its fit).

The ratio shows what the method's own work costs beyond the networks'. Median of ``--steps`` steps
after ``--warmup`` steps, with ``--threads`` torch threads.

    python bench/train_step.py                         # -> bench/results/train_step.json
    python bench/train_step.py --threads 1 --methods djsrh cfrh

The results file records the command, the machine, the shapes and every time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from machine import write_results

ROOT = Path(__file__).resolve().parents[1]
DEEP = ["djsrh", "jdsh", "cfrh", "ucmfh", "dcmht", "mesdch", "clipmh"]


def _median_ms(function, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def method_and_bare_steps(name: str, settings: dict, bits: int, n: int, dims: dict, seed: int = 0):
    """(method's step, bare step, shapes): two callables that each run one training step."""
    import torch

    from cmhash.methods import build_method
    from cmhash.methods.network import Batch, minibatches

    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, dims["image"])).astype(np.float32)
    texts = rng.normal(size=(n, dims["text"])).astype(np.float32)
    labels = (rng.random((n, dims["label"])) < 0.15).astype(np.float32)
    labels[np.arange(n), rng.integers(0, dims["label"], n)] = 1
    method = build_method(name, bits, settings, seed, "cpu", progress=False)
    steps = {}
    original_train_epochs = method.train_epochs

    def capture(batches, step, begin_epoch=None):  # the method's own batches and step, as its fit builds them
        if begin_epoch is not None:
            begin_epoch(0)
        steps["batches"], steps["step"] = batches, step

    method.train_epochs = capture
    method.fit(images, texts, labels if method.supervised else None)
    method.train_epochs = original_train_epochs
    stream = iter(steps["batches"](0))

    def method_step():
        nonlocal stream
        try:
            batch = next(stream)
        except StopIteration:
            stream = iter(steps["batches"](0))
            batch = next(stream)
        steps["step"](batch, 0)

    try:  # the method's own optimisers (their update is part of the networks' cost), else plain SGD
        optimizers = method.make_optimizers()
    except NotImplementedError:
        optimizers = [torch.optim.SGD(method.nets.parameters(), lr=1e-3)]
    tensors = {"image": torch.as_tensor(images), "text": torch.as_tensor(texts), "label": torch.as_tensor(labels)}
    generator = torch.Generator().manual_seed(seed)
    bare_batches = iter(())

    def bare_step():
        nonlocal bare_batches
        index = next(bare_batches, None)
        if index is None:
            bare_batches = iter(list(minibatches(n, method.batch_size, generator)))
            index = next(bare_batches)
        batch = Batch(tensors["image"][index], tensors["text"][index], tensors["label"][index])
        if method.fused:
            outputs = [method.pair_output(batch.images, batch.texts)]
        else:
            outputs = [method.image_output(batch.images), method.text_output(batch.texts)]
        if "label" in method.nets:  # MESDCH's label network
            outputs.append(method.nets["label"](batch.labels))
        for modality, output in (("image", outputs[0]), ("text", outputs[-1])):  # CFRH's decoders read the codes
            if f"{modality}_decoder" in method.nets:
                outputs.append(method.nets[f"{modality}_decoder"](output))
        loss = sum((output.float() ** 2).mean() for output in outputs)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    shapes = {key: [tuple(p.shape) for p in network.parameters()] for key, network in method.nets.items()}
    return method_step, bare_step, {"batch_size": method.batch_size, "parameters": shapes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=DEEP, choices=DEEP)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--items", type=int, default=3000, help="training items (the default pipeline's train split)")
    parser.add_argument("--labels", type=int, default=24, help="label columns")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step.json")
    args = parser.parse_args(argv)

    import torch

    from cmhash.pipeline.params import load_params, method_params

    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    dims = {"image": 1280, "text": 384, "label": args.labels}
    rows = []
    for name in args.methods:
        settings = method_params(params, name)
        method_step, bare_step, shapes = method_and_bare_steps(name, settings, args.bits, args.items, dims)
        method_ms = _median_ms(method_step, args.steps, args.warmup)
        bare_ms = _median_ms(bare_step, args.steps, args.warmup)
        rows.append({"method": name, "method_ms": round(method_ms, 2), "bare_ms": round(bare_ms, 2),
                     "ratio": round(method_ms / bare_ms, 2), **shapes})
        print(f"{name:7} {method_ms:8.2f} ms a step; bare {bare_ms:8.2f} ms; ratio {method_ms / bare_ms:5.2f} "
              f"(batch {shapes['batch_size']})", flush=True)
    write_results(args.out, torch=torch.__version__, threads=torch.get_num_threads(), bits=args.bits, items=args.items,
                  dims=dims, results=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
