"""bfloat16 conv+bias+ReLU on the CPU: the ``torch`` tactic on oneDNN's bfloat16 kernel, the same
tactic computing in float32 (``NATIVE_BF16`` off: what it did before), and eager PyTorch in
bfloat16 (``F.relu(F.conv2d(...))``).

    python benchmarks/bench_cpu_bf16_conv.py [--batch 4] [--reps 15] [--threads N] [--net resnet50] [--out FILE.md]

Every distinct k×k conv of one network (``benchmarks/shapes.py``) and its 1×1 convs (as k×k
convs: conv2d_relu with a 1×1 weight), channels_last input and weight, weights prepacked by the
tactic's cache (one warm-up call). Interleaved rounds on two rotating inputs; medians, GFLOP/s,
and each one's relative error against the float64 conv of the same bfloat16 inputs.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import fastconv  # noqa: E402
from benchmarks import shapes  # noqa: E402
from fastconv import _autotune, _bench  # noqa: E402
from fastconv.ops import _torch_tactic  # noqa: E402


def layers(net: str):
    """(name, c_in, c_out, h, w, kernel, stride, padding) of the network's convs and 1x1 convs."""
    for s in shapes.CONV_SHAPES:
        if net in s.nets:
            yield (shapes.shape_id(s), s.in_channels, s.out_channels, s.height, s.width, s.kernel, s.stride,
                   s.padding)
    for s in shapes.CONV1X1_SHAPES:
        if net in s.nets:
            yield (shapes.shape_id(s), s.in_channels, s.out_channels, s.height, s.width, (1, 1),
                   (s.stride, s.stride), (0, 0))


def tactic(native: bool, w, b, stride, padding):
    def run(x):
        old = _torch_tactic.NATIVE_BF16
        _torch_tactic.NATIVE_BF16 = native
        try:
            with fastconv.use_backend("torch"):
                return fastconv.conv2d_relu(x, w, b, stride, padding)
        finally:
            _torch_tactic.NATIVE_BF16 = old
    return run


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--net", default="resnet50", choices=shapes.NETWORKS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not _torch_tactic.NATIVE_BF16:
        print("note: this CPU/torch does not run the tactic's bfloat16 kernel by default", file=sys.stderr)
    load0 = os.getloadavg()
    cl = torch.channels_last
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, cin, cout, h, w, kernel, stride, padding in layers(args.net):
        xs = [torch.randn(args.batch, cin, h, w, generator=gen).bfloat16().contiguous(memory_format=cl)
              for _ in range(2)]
        wt = (torch.randn(cout, cin, *kernel, generator=gen) / (cin * kernel[0] * kernel[1]) ** 0.5).bfloat16()
        wt = wt.contiguous(memory_format=cl)
        b = torch.randn(cout, generator=gen).bfloat16()
        fns = {"onednn_bf16": tactic(True, wt, b, stride, padding), "in_float32": tactic(False, wt, b, stride, padding),
               "eager_bf16": lambda x: F.relu(F.conv2d(x, wt, b, stride, padding))}
        with torch.inference_mode():
            ref = torch.relu(F.conv2d(xs[0].double(), wt.double(), b.double(), stride, padding))
            errs = {k: _bench.rel_error(f(xs[0]), ref) for k, f in fns.items()}
            times = _bench.time_interleaved(fns, xs, args.reps, 2, "cpu")
        med = {k: statistics.median(v) for k, v in times.items()}
        gflop = 2 * ref.numel() * cin * kernel[0] * kernel[1] / 1e9
        rows.append((name, med, errs, gflop))
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items()), file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    lines = [
        f"machine: {_autotune.device_name(torch.device('cpu'))} ({os.cpu_count()} logical CPUs), "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, Python {platform.python_version()}; "
        f"load average before {load0[0]:.1f}, after {load1[0]:.1f}",
        f"{args.net}'s convs, batch {args.batch}, bf16 channels_last; median of {args.reps} interleaved calls",
        "",
        "| layer | oneDNN bf16 ms (GFLOP/s) | in float32 ms | eager bf16 ms | × float32 | × eager | rel. error (bf16 / fp32 / eager) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, med, errs, gflop in rows:
        n, f, e = med["onednn_bf16"], med["in_float32"], med["eager_bf16"]
        lines.append(f"| {name} | {n:.2f} ({gflop / n * 1e3:.0f}) | {f:.2f} | {e:.2f} | {f / n:.2f} | {e / n:.2f} | "
                     f"{errs['onednn_bf16']:.1e} / {errs['in_float32']:.1e} / {errs['eager_bf16']:.1e} |")
    total = {k: sum(r[1][k] for r in rows) for k in ("onednn_bf16", "in_float32", "eager_bf16")}
    lines.append(f"| **sum** | {total['onednn_bf16']:.1f} | {total['in_float32']:.1f} | {total['eager_bf16']:.1f} | "
                 f"{total['in_float32'] / total['onednn_bf16']:.2f} | {total['eager_bf16'] / total['onednn_bf16']:.2f} | |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
