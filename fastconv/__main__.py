"""Command line: ``python -m fastconv bench | summary MODEL | demo``."""
from __future__ import annotations

import argparse
import os
import sys
import time


def _demo(args) -> int:
    import torch
    import torch.nn.functional as F

    import fastconv

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"fastconv {fastconv.__version__} | torch {torch.__version__} | device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    for name, status in fastconv.backend_status().items():
        print(f"  backend {name:9s}: {status}")
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(4, 64, 56, 56, generator=gen).to(device)
    w = (torch.randn(64, 64, 3, 3, generator=gen) * 0.05).to(device)
    b = torch.randn(64, generator=gen).to(device)
    ref = F.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1))
    print("conv2d_relu 4x64x56x56, 3x3, 64 channels, fp32:")
    for backend in fastconv.available_backends():
        if backend == "triton" and device == "cpu":
            continue  # the interpreter is far too slow for this shape
        with fastconv.use_backend(backend):
            y = fastconv.conv2d_relu(x, w, b, padding=1)
            t0 = time.perf_counter()
            y = fastconv.conv2d_relu(x, w, b, padding=1)
            if device == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1e3
        err = ((y.double() - ref).norm() / ref.norm()).item()
        print(f"  {backend:9s}: rel. error vs fp64 {err:.2e}, {ms:.2f} ms (one call)")
    return 0


def main(argv=None) -> int:
    from . import _bench, _summary

    parser = argparse.ArgumentParser(prog=_summary.prog(), description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("demo", help="run conv2d_relu on every available backend and print its error against PyTorch")
    _bench.add_arguments(sub.add_parser(
        "bench", help="time the five model families: PyTorch eager vs fastconv.convert(), with numerics",
        description=_bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    _summary.add_arguments(sub.add_parser(
        "summary", help="per-layer shapes, parameters, FLOPs, bytes moved (and a roofline with --gpu)",
        description=_summary.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return {"demo": _demo, "bench": _bench.main, "summary": _summary.main}[args.command](args)
    except BrokenPipeError:
        # the reader went away (`... | head`): no traceback; stdout pointed at /dev/null so the
        # interpreter's final flush does not raise again (the Python documentation's recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
