"""Converted models under ``torch.autocast("cpu")`` against the torchvision model under the same
region, per model: eager; ``convert(model)`` called inside the region; and ``convert(model,
dtype=...)`` (weights converted once, no region). Interleaved call by call in one process, the
order rotated every round, medians, each variant tuned on its first call. Every variant's output
is checked against eager float32 (relative error below 5e-2, a network's worth of bf16/fp16
roundings).

    python benchmarks/bench_cpu_autocast.py [--models resnet18,densenet121] [--size 64] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too
import fastconv  # noqa: E402
from fastconv._bench import randomize_batchnorm  # noqa: E402

DEFAULT_MODELS = "alexnet,vgg11,googlenet,resnet18,resnet50,densenet121"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = p.parse_args()
    import torchvision

    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} thread(s), batch {args.batch}, {args.size}x{args.size}, {args.dtype} autocast, "
          f"median of {args.repeats} interleaved calls; torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print(f"| model | eager autocast ms | convert() autocast ms | convert(dtype) ms | convert() autocast vs eager × |\n"
          f"|---|---|---|---|---|")
    for name in args.models.split(","):
        kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        model = randomize_batchnorm(torchvision.models.get_model(name, **kwargs),
                                    torch.Generator().manual_seed(0)).eval()
        x = torch.randn(args.batch, 3, args.size, args.size)
        converted, cast = fastconv.convert(model), fastconv.convert(model, dtype=dtype)

        def in_region(m):
            def f():
                with torch.autocast("cpu", dtype=dtype):
                    return m(x)
            return f

        runs = {"eager": in_region(model), "convert()": in_region(converted), "convert(dtype)": lambda: cast(x.to(dtype))}
        times = {k: [] for k in runs}
        with torch.inference_mode():
            ref = model(x)
            for k, f in runs.items():  # tunes (auto) and warms up; every variant computes the model
                err = ((f().float() - ref).norm() / ref.norm()).item()
                assert err < 5e-2, f"{name} {k}: relative error {err:.1e}"
                f()
            order = list(runs)
            for r in range(args.repeats):
                for k in order[r % len(order):] + order[:r % len(order)]:  # rotated: see bench_cpu_layout_policy
                    t0 = time.perf_counter()
                    runs[k]()
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in med.values())
              + f" | {med['eager'] / med['convert()']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
