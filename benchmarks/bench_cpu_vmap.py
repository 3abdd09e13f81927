"""torch.func.vmap of fastconv.conv2d_relu on the CPU: the vmapped dimension folded into the batch
(one kernel call, fastconv's vmap rule) against one call per example (what PyTorch's per-example
fallback does, written as a loop) and one plain call on the flattened batch.

    python benchmarks/bench_cpu_vmap.py [--reps 9] [--threads 1]

Each case: warm-up, then the variants interleaved, medians reported; results checked against
F.conv2d first.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too
import fastconv  # noqa: E402

# (examples, per-example batch, channels, size)
CASES = [(32, 1, 16, 8), (8, 2, 64, 28)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    print("| examples × [N, C, H, W] | vmap (folded) ms | one call per example ms | one call on the flat batch ms |")
    print("|---|---|---|---|")
    for b, n, c, s in CASES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(b, n, c, s, s, generator=gen)
        w, bias = torch.randn(c, c, 3, 3, generator=gen) * 0.05, torch.randn(c, generator=gen)
        conv = lambda xi: fastconv.conv2d_relu(xi, w, bias, padding=1)  # noqa: E731
        flat = x.flatten(0, 1)
        variants = {"vmap": lambda: torch.func.vmap(conv)(x),
                    "loop": lambda: torch.stack([conv(x[i]) for i in range(b)]),
                    "flat": lambda: conv(flat)}
        with torch.no_grad():
            want = F.relu(F.conv2d(flat, w, bias, padding=1)).unflatten(0, (b, n))
            for fn in variants.values():
                got = fn().reshape(want.shape)
                assert (got - want).norm() <= 1e-5 * want.norm(), "wrong result"
            times = {k: [] for k in variants}
            for _ in range(args.reps):
                for k, fn in variants.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"| {b} × [{n}, {c}, {s}, {s}] | {ms['vmap']:.2f} | {ms['loop']:.2f} | {ms['flat']:.2f} |")


if __name__ == "__main__":
    main()
