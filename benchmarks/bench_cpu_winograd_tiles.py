"""F(4x4, 3x3) against F(2x2, 3x3) in fastconv's CPU Winograd kernel, per layer: where the tile
rule of fastconv/ops/conv2d_relu.py (winograd_tile) comes from.

    python benchmarks/bench_cpu_winograd_tiles.py [--threads 1] [--reps 21] [--wall] [NxCxHW[xK] ...]
    python benchmarks/bench_cpu_winograd_tiles.py --models resnet50:4,vgg16:2 [--reps 9]

Each shape (batch x C_in x H=W, and C_out when it differs from C_in) runs the private op
fastconv::_conv2d_winograd_cpu with both transformed weights, alternating which goes first in each
of --reps rounds after a warm-up; medians of process CPU time (with --threads 1 the single-core
cost even on a loaded machine) or, with --wall, of the wall clock. Prints the 4x4 tile count and
what the rule picks next to the measured ratio.

--models times whole torchvision models (random weights) converted by fastconv.convert and run
under `auto`, alternating FASTCONV_CPU_WINOGRAD=2 (F(2x2) everywhere) with the default rule in the
same process (each setting tunes its own tactics first), and reports the max abs difference of
each against eager PyTorch.

A standalone script (benchmarks/conftest.py keeps pytest from collecting bench_cpu_*.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastconv  # noqa: E402,F401  (loads the extension)

conv_mod = importlib.import_module("fastconv.ops.conv2d_relu")

# ResNet-50's 3x3 layers around the crossover, and DenseNet-121's growth convs (C_out 32)
DEFAULT_SHAPES = ["1x512x7", "2x512x7", "4x512x7", "8x512x7", "16x512x7", "1x256x14", "2x256x14", "4x256x14",
                  "1x128x28", "1x64x56", "4x128x56x32", "4x128x28x32", "4x128x14x32", "4x128x7x32"]


def measure(shape: str, reps: int, clock) -> str:
    n, c, hw, *rest = (int(v) for v in shape.split("x"))
    k = rest[0] if rest else c
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(k, c, 3, 3, generator=g) / (9 * c) ** 0.5
    b = torch.randn(k, generator=g)
    out = torch.empty(n, k, hw, hw).contiguous(memory_format=torch.channels_last)
    u = {m: conv_mod.make_winograd_weight(w, m) for m in (2, 4)}
    op = torch.ops.fastconv._conv2d_winograd_cpu
    times = {2: [], 4: []}
    for m in (2, 4):
        for _ in range(3):
            op(x, u[m], b, None, [1, 1, 1, 1], True, out, w)
    for r in range(reps):
        for m in ((2, 4) if r % 2 else (4, 2)):
            t0 = clock()
            op(x, u[m], b, None, [1, 1, 1, 1], True, out, w)
            times[m].append(clock() - t0)
    t2, t4 = (statistics.median(times[m]) * 1e3 for m in (2, 4))
    tiles = n * -(-hw // 4) * -(-hw // 4)
    rule = conv_mod.winograd_tile(x, out) if os.environ.get("FASTCONV_CPU_WINOGRAD", "1") == "1" else "-"
    return f"| {shape} | {tiles} | {t2:.2f} | {t4:.2f} | {t2 / t4:.2f}x | F({rule}x{rule}) |"


def measure_model(spec: str, reps: int, clock) -> str:
    import torchvision

    name, batch = spec.split(":")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    converted = fastconv.convert(model)
    x = torch.randn(int(batch), 3, 224, 224)
    times, outs = {"2": [], "1": []}, {}
    saved = os.environ.get("FASTCONV_CPU_WINOGRAD")
    try:
        with torch.inference_mode():
            for mode in ("2", "1"):  # tune and warm up each setting
                os.environ["FASTCONV_CPU_WINOGRAD"] = mode
                converted(x)
                converted(x)
            for r in range(reps):
                for mode in (("2", "1") if r % 2 else ("1", "2")):
                    os.environ["FASTCONV_CPU_WINOGRAD"] = mode
                    t0 = clock()
                    outs[mode] = converted(x)
                    times[mode].append(clock() - t0)
            ref = model(x)
    finally:
        if saved is None:
            os.environ.pop("FASTCONV_CPU_WINOGRAD", None)
        else:
            os.environ["FASTCONV_CPU_WINOGRAD"] = saved
    t2, t1 = (statistics.median(times[m]) * 1e3 for m in ("2", "1"))
    d2, d1 = ((outs[m] - ref).abs().max().item() for m in ("2", "1"))
    return f"| {name} | {batch} | {t2:.0f} | {t1:.0f} | {t2 / t1:.2f}x | {d2:.1e} | {d1:.1e} |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="*", default=DEFAULT_SHAPES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--wall", action="store_true", help="wall clock instead of process CPU time")
    parser.add_argument("--models", default="", help="comma-separated torchvision_name:batch, e.g. resnet50:4")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.process_time
    if args.models:
        print(f"fastconv.convert(model) under auto, fp32 224x224, {args.threads} thread(s), medians of {args.reps} "
              f"alternating calls ({'wall clock' if args.wall else 'process CPU time'}); torch {torch.__version__}\n")
        print("| model | batch | F(2x2) everywhere ms | default tile rule ms | speedup | max abs diff F(2x2) "
              "| max abs diff default |")
        print("|---|---|---|---|---|---|---|")
        for spec in args.models.split(","):
            print(measure_model(spec, args.reps, clock), flush=True)
        return 0
    print(f"fastconv Winograd tiles, fp32 channels_last, {args.threads} thread(s), medians of {args.reps} "
          f"alternating runs ({'wall clock' if args.wall else 'process CPU time'}); torch {torch.__version__}\n")
    print("| shape (N x C_in x HW [x C_out]) | 4x4 tiles | F(2x2) ms | F(4x4) ms | F(4x4) speedup | rule picks |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes:
        print(measure(shape, args.reps, clock), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
