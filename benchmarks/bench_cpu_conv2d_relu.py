"""fastconv's C++ CPU conv2d+bias+ReLU against oneDNN (F.relu(F.conv2d)) and a plain unfold+matmul.

    python benchmarks/bench_cpu_conv2d_relu.py [--batch 4] [--reps 25] [--threads N] [--cpu-time] [--out FILE.md]

ResNet-50's 3x3 stride-1 convs (DESIGN §8), fp32, NCHW and channels_last (the weight in the same
memory format as x, as model.to(memory_format=...) leaves it). On channels_last the cpu backend
runs its Winograd kernel (F(4x4, 3x3), or F(2x2, 3x3) for outputs of fewer than 16 4x4 tiles);
the "F(2x2)" column is the same backend with FASTCONV_CPU_WINOGRAD=2 and the "im2col" column with
FASTCONV_CPU_WINOGRAD=0 (its implicit-GEMM kernel, what NCHW always gets). Each implementation is warmed up,
then timed in interleaved rounds (every round runs every implementation once, on one of two
rotating inputs, so drift in clock or cache state hits all of them alike); the table shows
medians, GFLOP/s, speed ratios, and fastconv's relative error against an fp64 reference.

--cpu-time times with the process's CPU time instead of the wall clock. With --threads 1 that
is the single-core cost even on a shared, oversubscribed machine (time spent descheduled is not
counted), which makes comparisons there far more repeatable than wall-clock medians.

A standalone script (main's benchmarks/conftest.py keeps pytest from collecting bench_cpu_*.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastconv  # noqa: E402
from benchmarks._env import set_env  # noqa: E402

# (name, C_in = C_out, H = W) of ResNet-50's 3x3 convs
SHAPES = [("conv2_x 64->64 @56", 64, 56), ("conv3_x 128->128 @28", 128, 28), ("conv4_x 256->256 @14", 256, 14),
          ("conv5_x 512->512 @7", 512, 7)]
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def make_inputs(batch, c, hw, fmt, seed):
    # normal tensors, as a model's parameters are (inference tensors' transformed weights are not cached)
    with torch.inference_mode(False):
        return _make_inputs(batch, c, hw, fmt, seed)


def _make_inputs(batch, c, hw, fmt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, hw, hw, generator=g).contiguous(memory_format=fmt)
    w = (torch.randn(c, c, 3, 3, generator=g) / (3 * c**0.5)).contiguous(memory_format=fmt)
    b = torch.randn(c, generator=g)
    return x, w, b


def run_fastconv(x, w, b):
    with fastconv.use_backend("cpu"):
        return fastconv.conv2d_relu(x, w, b, padding=1)


def run_im2col(x, w, b):
    with set_env("FASTCONV_CPU_WINOGRAD", "0"):
        return run_fastconv(x, w, b)


def run_f2(x, w, b):
    with set_env("FASTCONV_CPU_WINOGRAD", "2"):
        return run_fastconv(x, w, b)


def run_onednn(x, w, b):
    return F.relu(F.conv2d(x, w, b, padding=1))


def run_unfold(x, w, b):
    n, _, h, wd = x.shape
    cols = F.unfold(x, 3, padding=1)  # [N, C*9, H*W]
    y = torch.matmul(w.reshape(w.shape[0], -1), cols)  # [N, Co, H*W]
    return F.relu(y + b[:, None]).view(n, -1, h, wd)


IMPLS = {"fastconv": run_fastconv, "F(2x2)": run_f2, "im2col": run_im2col, "oneDNN": run_onednn,
         "unfold+matmul": run_unfold}


def bench_case(batch, c, hw, fmt, reps, warmup=3, clock=time.perf_counter):
    inputs = [make_inputs(batch, c, hw, fmt, seed) for seed in (0, 1)]
    times = {name: [] for name in IMPLS}
    for name, fn in IMPLS.items():
        for _ in range(warmup):
            for args in inputs:  # each input has its own weight: its first call transforms/packs it
                fn(*args)
    for r in range(reps):
        args = inputs[r % 2]
        for name, fn in IMPLS.items():
            t0 = clock()
            fn(*args)
            times[name].append(clock() - t0)
    x, w, b = inputs[0]
    ref = F.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1))
    y = run_fastconv(x, w, b)
    err = ((y.double() - ref).norm() / ref.norm()).item()
    return {name: statistics.median(ts) for name, ts in times.items()}, err


def table(batch, reps, cpu_time=False):
    clock = time.process_time if cpu_time else time.perf_counter
    load = ", load average %.1f at start" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    lines = [
        f"fastconv `cpu` conv2d+bias+ReLU, ResNet-50 3x3 stride-1 convs, batch {batch}, fp32; medians of {reps} "
        f"interleaved runs ({'process CPU time' if cpu_time else 'wall clock'}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs{load}",
        "",
        "| layer | layout | fastconv ms | F(2x2) ms | im2col ms | oneDNN conv+ReLU ms | unfold+matmul ms "
        "| fastconv GFLOP/s | oneDNN GFLOP/s | fastconv vs oneDNN | fastconv vs unfold | rel err (fp64 ref) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, c, hw in SHAPES:
        for lname, fmt in LAYOUTS.items():
            t, err = bench_case(batch, c, hw, fmt, reps, clock=clock)
            flop = 2.0 * batch * c * hw * hw * c * 9
            lines.append(
                f"| {label} | {lname} | {t['fastconv'] * 1e3:.2f} | {t['F(2x2)'] * 1e3:.2f} | {t['im2col'] * 1e3:.2f} | "
                f"{t['oneDNN'] * 1e3:.2f} | "
                f"{t['unfold+matmul'] * 1e3:.2f} | {flop / t['fastconv'] / 1e9:.0f} | {flop / t['oneDNN'] / 1e9:.0f} | "
                f"{t['oneDNN'] / t['fastconv']:.2f}x | {t['unfold+matmul'] / t['fastconv']:.2f}x | {err:.1e} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    lines += ["", "Ratios are speedups (baseline time / fastconv time): above 1 means fastconv is faster."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cpu-time", action="store_true", help="time with process CPU time (use with --threads 1)")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "cpu" not in fastconv.available_backends():
        sys.exit(f"fastconv's cpu backend is unavailable: {fastconv.backend_status()['cpu']}")
    with torch.inference_mode():
        text = table(args.batch, args.reps, args.cpu_time)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
