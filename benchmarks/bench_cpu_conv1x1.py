"""CPU benchmark of fastconv.conv1x1 (backend "cpu") at ResNet-50 and DenseNet-121 1x1 shapes.

Baselines in the same process, same dtype and layout, under torch.inference_mode():
  - oneDNN:  F.relu(F.conv2d(x, w, b, stride))        (DenseNet: F.conv2d(F.relu(F.batch_norm(x)), w))
  - matmul:  the 1x1 conv as torch.matmul / addmm on the pixels, no unfold (stride: a strided copy first)
Warm-up, then medians of interleaved runs (each round runs every implementation once, so drift and
turbo affect all alike). Writes a markdown table to benchmarks/RESULTS_cpu_conv1x1.md.

    python benchmarks/bench_cpu_conv1x1.py [--batch 4] [--rounds 30] [--threads N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastconv  # noqa: E402

# (name, C_in, C_out, H, stride, prologue): prologue = DenseNet's BN-ReLU before the conv (no bias, no ReLU after)
SHAPES = [
    ("R50 256→64 @56", 256, 64, 56, 1, False),
    ("R50 64→256 @56", 64, 256, 56, 1, False),
    ("R50 1024→256 @14", 1024, 256, 14, 1, False),
    ("R50 256→1024 @14", 256, 1024, 14, 1, False),
    ("R50 512→2048 @7", 512, 2048, 7, 1, False),
    ("R50 proj 256→512 /2 @56", 256, 512, 56, 2, False),
    ("D121 bn-relu 64→128 @56", 64, 128, 56, 1, True),
    ("D121 bn-relu 160→128 @56", 160, 128, 56, 1, True),
    ("D121 bn-relu 256→128 @56", 256, 128, 56, 1, True),
    ("D121 bn-relu 128→128 @28", 128, 128, 28, 1, True),
    ("D121 bn-relu 320→128 @28", 320, 128, 28, 1, True),
    ("D121 bn-relu 512→128 @28", 512, 128, 28, 1, True),
    ("D121 transition 256→128 @56", 256, 128, 56, 1, True),
]


def make_impls(ci, co, h, stride, prologue, batch, channels_last):
    torch.manual_seed(0)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, ci, h, h).contiguous(memory_format=mf)
    w = torch.randn(co, ci, 1, 1) / ci ** 0.5
    w2 = w.reshape(co, ci)
    b = torch.randn(co)
    # an eval-mode BatchNorm and its per-channel affine form for the fused prologue
    mean, var, gamma, beta = torch.randn(ci), torch.rand(ci) + 0.5, torch.rand(ci) + 0.5, torch.randn(ci)
    scale = gamma / torch.sqrt(var + 1e-5)
    shift = beta - mean * scale
    oh = (h - 1) // stride + 1

    def pre(t):
        return F.relu(F.batch_norm(t, mean, var, gamma, beta, False, 0.0, 1e-5)) if prologue else t

    def fast():
        with fastconv.use_backend("cpu"):
            if prologue:
                return fastconv.conv1x1(x, w, None, stride, relu=False, in_scale=scale, in_shift=shift, in_relu=True)
            return fastconv.conv1x1(x, w, b, stride)

    def onednn():
        if prologue:
            return F.conv2d(pre(x), w, None, stride)
        return F.relu(F.conv2d(x, w, b, stride))

    def matmul():
        t = pre(x)
        if stride != 1:
            t = t[:, :, ::stride, ::stride]
        if channels_last:  # pixels x channels rows: a view for channels_last input
            rows = t.permute(0, 2, 3, 1).reshape(-1, ci)
            y = torch.matmul(rows, w2.t()) if prologue else torch.addmm(b, rows, w2.t())
            y = y.view(batch, oh, oh, co).permute(0, 3, 1, 2)
        else:  # per image: W (co x ci) . X (ci x pixels)
            y = torch.matmul(w2, t.reshape(batch, ci, -1))
            if not prologue:
                y = y + b.view(1, co, 1)
            y = y.view(batch, co, oh, oh)
        return y if prologue else F.relu(y)

    impls = {"fastconv": fast, "oneDNN": onednn, "matmul": matmul}
    ref = onednn()
    for name, fn in impls.items():  # all three compute the same function
        err = ((fn().double() - ref.double()).norm() / ref.double().norm()).item()
        assert err < 1e-4, f"{name} disagrees with oneDNN: rel err {err:.2e}"
    flops = 2.0 * batch * oh * oh * ci * co
    return impls, flops


def bench(impls, rounds, warmup=3):
    for _ in range(warmup):
        for fn in impls.values():
            fn()
    times = {name: [] for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="first shapes only, few rounds")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS_cpu_conv1x1.md"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "cpu" not in fastconv.available_backends():
        sys.exit(f"fastconv cpu backend unavailable: {fastconv.backend_status()['cpu']}")
    shapes = SHAPES[:3] if args.quick else SHAPES
    rounds = 5 if args.quick else args.rounds
    header = ("| layer | layout | fastconv ms | GFLOP/s | oneDNN ms | fastconv speedup vs oneDNN | matmul ms "
              "| speedup vs matmul |")
    lines = [header, "|" + "---|" * 8]
    print(header, flush=True)
    with torch.inference_mode():
        for name, ci, co, h, stride, prologue in shapes:
            for cl in (False, True):
                impls, flops = make_impls(ci, co, h, stride, prologue, args.batch, cl)
                t = bench(impls, rounds)
                row = (f"| {name} | {'NHWC' if cl else 'NCHW'} | {t['fastconv'] * 1e3:.2f} | "
                       f"{flops / t['fastconv'] / 1e9:.0f} | {t['oneDNN'] * 1e3:.2f} | {t['oneDNN'] / t['fastconv']:.2f}× | "
                       f"{t['matmul'] * 1e3:.2f} | {t['matmul'] / t['fastconv']:.2f}× |")
                lines.append(row)
                print(row, flush=True)
    note = (f"\nbatch {args.batch}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f} at the end; medians of {rounds} interleaved rounds after warm-up. "
            "oneDNN = F.relu(F.conv2d(...)); DenseNet rows (bn-relu) compare against eager "
            "F.conv2d(F.relu(F.batch_norm(x))) and fastconv's fused prologue (no bias, no ReLU after, as DenseNet). "
            "matmul = torch.matmul/addmm over pixels without unfold (strided input copied first).\n")
    with open(args.output, "w") as f:
        f.write("# fastconv.conv1x1 on the CPU\n\n" + "\n".join(lines) + "\n" + note)
    print(note)


if __name__ == "__main__":
    main()
