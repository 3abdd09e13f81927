"""Host cost of one conv call per path (stage `overhead` of benchmarks/gpu_check.sh, ~15 s).

On a GPU a small conv's kernel runs for a few microseconds; what an eager model pays per layer is
the host path around it. This times that path on a tiny problem (batch 1, 16 → 16 channels, 8×8,
3×3 and 1×1): ``calls`` back-to-back calls, one synchronize at the end, wall time per call — on a
GPU the kernels queue behind the host, so this is host time. Paths: PyTorch's conv + ReLU, fastconv's
public functional under each backend (checks, torch.library op, dispatch), and a converted layer
(``fastconv.convert``: the eager fast path, fastconv/_fastpath.py) under each backend.

The 2026-11-28 H200 run found the converted models host-bound; this is the number to watch.

    python benchmarks/host_overhead.py [--device cuda] [--calls 2000] [--markdown F] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import fastconv  # noqa: E402


def _per_call_us(fn, calls: int, device: str, label: str = "", rounds: int = 5) -> float:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(samples)


def measure(device: str, calls: int, dtype: torch.dtype, per_call=_per_call_us, unit: str = "us") -> list:
    """One row per path: ``per_call(fn, calls, device, label)`` (default: wall µs per call) under ``unit``."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 8, generator=gen).to(device, dtype).contiguous(memory_format=torch.channels_last)
    backends = [b for b in fastconv.available_backends() if b not in ("reference",)]
    for k in (3, 1):
        conv = nn.Conv2d(16, 16, k, padding=k // 2).to(device, dtype).eval()
        w, b = conv.weight.detach(), conv.bias.detach()
        layer = nn.Sequential(conv, nn.ReLU()).eval()
        drop_in = fastconv.nn.Conv2dReLU(16, 16, k, padding=k // 2).to(device, dtype)  # trainable parameters
        with torch.inference_mode():
            rows.append({"path": "torch conv+relu", "kernel": f"{k}x{k}",
                         unit: per_call(lambda: torch.relu(F.conv2d(x, w, b, 1, k // 2)), calls, device,
                                        f"torch-{k}")})
            converted = fastconv.convert(layer)
            for backend in backends:
                with fastconv.use_backend(backend):
                    try:
                        fastconv.conv2d_relu(x, w, b, 1, k // 2)
                    except Exception as exc:  # a backend that cannot run this device/dtype
                        rows.append({"path": f"fastconv.conv2d_relu [{backend}]", "kernel": f"{k}x{k}",
                                     "error": f"{type(exc).__name__}: {exc}"[:100]})
                        continue
                    rows.append({"path": f"fastconv.conv2d_relu [{backend}]", "kernel": f"{k}x{k}",
                                 unit: per_call(lambda: fastconv.conv2d_relu(x, w, b, 1, k // 2), calls, device,
                                                f"functional-{backend}-{k}")})
                    rows.append({"path": f"converted layer [{backend}]", "kernel": f"{k}x{k}",
                                 unit: per_call(lambda: converted(x), calls, device, f"converted-{backend}-{k}")})
                    rows.append({"path": f"fastconv.nn.Conv2dReLU [{backend}]", "kernel": f"{k}x{k}",
                                 unit: per_call(lambda: drop_in(x), calls, device, f"drop-in-{backend}-{k}")})
    return rows


def table(rows: list, title: str, versions: dict, unit: str, column: str, fmt: str) -> str:
    """A markdown table of ``rows``: path, kernel and ``row[unit]`` formatted by ``fmt`` (or the error)."""
    lines = [title + "; " + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
             f"| path | kernel | {column} |", "|---|---|---|"]
    for r in rows:
        value = format(r[unit], fmt) if unit in r else r["error"]
        lines.append(f"| {r['path']} | {r['kernel']} | {value} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list, env: dict) -> str:
    title = (f"Host cost per conv call on {env['device']} ({env['dtype']}, batch 1, 16→16 channels, 8×8; "
             f"{env['calls']} back-to-back calls, one sync, median of 5 rounds)")
    return table(rows, title, env["versions"], "us", "µs per call", ".1f")


def emit(text: str, env: dict, rows: list, args) -> None:
    """Print the table; write it to ``--markdown`` and the rows to ``--json`` where asked."""
    print(text)
    if args.markdown:
        open(args.markdown, "w").write(text)
    if args.json:
        json.dump({"env": env, "rows": rows}, open(args.json, "w"), indent=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--markdown")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from fastconv import _devices

    dtype_name = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    env = {"device": device_name, "dtype": dtype_name, "calls": args.calls, "versions": _devices.versions()}
    rows = measure(args.device, args.calls, dtype)
    emit(markdown(rows, env), env, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
