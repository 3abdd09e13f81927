"""fastconv's C++ CPU max_pool2d against F.max_pool2d on the pools of the classic CNNs.

    python benchmarks/bench_cpu_max_pool2d.py [--batch 4] [--reps 30] [--threads N] [--out FILE.md]

Batch 4, float32, NCHW and channels_last. Each case is warmed up, then the two implementations
run interleaved (so drifting clocks and caches hit both alike) on a few rotating inputs, and
the medians are reported. GB/s counts one read of the input and one write of the output, the
traffic a single-pass kernel needs. Ratio > 1 means fastconv is faster. Results are checked to
be bit-identical before timing.
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

# (network, layer, C, H, kernel, stride, padding, ceil_mode)
POOLS = [
    ("AlexNet", "pool1", 64, 55, 3, 2, 0, False),
    ("AlexNet", "pool2", 192, 27, 3, 2, 0, False),
    ("AlexNet", "pool5", 256, 13, 3, 2, 0, False),
    ("VGG16", "pool1", 64, 224, 2, 2, 0, False),
    ("VGG16", "pool2", 128, 112, 2, 2, 0, False),
    ("VGG16", "pool3", 256, 56, 2, 2, 0, False),
    ("VGG16", "pool4", 512, 28, 2, 2, 0, False),
    ("VGG16", "pool5", 512, 14, 2, 2, 0, False),
    ("GoogLeNet", "maxpool1", 64, 112, 3, 2, 0, True),
    ("GoogLeNet", "maxpool2", 192, 56, 3, 2, 0, True),
    ("GoogLeNet", "maxpool3", 480, 28, 3, 2, 0, True),
    ("GoogLeNet", "maxpool4", 832, 14, 3, 2, 0, True),
    ("GoogLeNet", "3a branch4", 192, 28, 3, 1, 1, True),
    ("GoogLeNet", "4a branch4", 480, 14, 3, 1, 1, True),
    ("GoogLeNet", "5a branch4", 832, 7, 3, 1, 1, True),
    ("ResNet", "stem", 64, 112, 3, 2, 1, False),
]


def _time(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def bench_case(c, h, k, s, p, ceil, batch, layout, reps, n_inputs=3):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    xs = [torch.randn(batch, c, h, h).contiguous(memory_format=fmt) for _ in range(n_inputs)]
    ours = lambda x: fastconv.max_pool2d(x, k, s, p, 1, ceil)  # noqa: E731
    theirs = lambda x: F.max_pool2d(x, k, s, p, 1, ceil)  # noqa: E731
    y, ref = ours(xs[0]), theirs(xs[0])
    if not torch.equal(y, ref):
        raise AssertionError(f"fastconv differs from F.max_pool2d for C={c} H={h} k={k} s={s} p={p} {layout}")
    for x in xs:  # warm-up: page in inputs, outputs and thread pools
        ours(x), theirs(x)
    t_ours, t_theirs = [], []
    for i in range(reps):
        x = xs[i % n_inputs]
        t_ours.append(_time(ours, x))
        t_theirs.append(_time(theirs, x))
    bytes_moved = (xs[0].numel() + y.numel()) * xs[0].element_size()
    return statistics.median(t_ours), statistics.median(t_theirs), bytes_moved, tuple(y.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    lines = [
        f"CPU max_pool2d, float32, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"medians of {args.reps} interleaved runs (fastconv backend `cpu` vs `F.max_pool2d`), "
        f"load average at start {os.getloadavg()[0]:.1f}",
        "",
        "| network | layer | input C@HxW | pool | layout | output | fastconv ms | torch ms | fastconv GB/s | torch GB/s | ratio |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    with fastconv.use_backend("cpu"), torch.inference_mode():
        for net, layer, c, h, k, s, p, ceil in POOLS:
            for layout in ("nchw", "channels_last"):
                t_ours, t_theirs, nbytes, shape = bench_case(c, h, k, s, p, ceil, args.batch, layout, args.reps)
                pool = f"{k}x{k}/{s}" + (f" pad {p}" if p else "") + (" ceil" if ceil else "")
                line = (
                    f"| {net} | {layer} | {c}@{h}x{h} | {pool} | {layout} | "
                    f"{shape[1]}@{shape[2]}x{shape[3]} | {t_ours * 1e3:.3f} | {t_theirs * 1e3:.3f} | "
                    f"{nbytes / t_ours / 1e9:.1f} | {nbytes / t_theirs / 1e9:.1f} | {t_theirs / t_ours:.2f} |"
                )
                lines.append(line)
                print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
