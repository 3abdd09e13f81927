"""A converted model serving batch sizes that take turns, against the same calls grouped by
batch size (CPU, one thread by default): whatever a call caches per shape (oneDNN's prepacked
weights, tactics, plans) must not be rebuilt when the batch size changes between calls.

    python benchmarks/bench_cpu_batch_turns.py [--model resnet18] [--batches 1,2,3,4] [--rounds 6] [--size 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too
import fastconv  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batches", default="1,2,3,4")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="the best of this many runs of each order")
    args = p.parse_args()
    import torchvision

    torch.set_num_threads(args.threads)
    model = fastconv.convert(getattr(torchvision.models, args.model)(num_classes=10).eval())
    xs = [torch.randn(int(n), 3, args.size, args.size) for n in args.batches.split(",")]

    def per_call_ms(order):
        t0 = time.perf_counter()
        for x in order:
            model(x)
        return (time.perf_counter() - t0) / len(order) * 1e3

    grouped = [x for x in xs for _ in range(args.rounds)]
    turns = [x for _ in range(args.rounds) for x in xs]
    with torch.inference_mode():
        for x in xs * 2:  # tune and plan every shape first
            model(x)
        g = min(per_call_ms(grouped) for _ in range(args.repeats))
        t = min(per_call_ms(turns) for _ in range(args.repeats))
    print(f"{args.model} {args.size}x{args.size}, batches {args.batches}, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f}: grouped {g:.1f} ms/call, taking turns {t:.1f} ms/call "
          f"({t / g:.2f}x)")


if __name__ == "__main__":
    main()
