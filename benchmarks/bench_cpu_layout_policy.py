"""convert()'s default layout policy on the CPU, against its alternatives, per torchvision model:
eager; ``convert(model)`` (the default: channels_last activations where the forward is known to
take any layout, and in each largest known part with two or more convs otherwise; k x k conv
weights stored channels_last); the same with the weights left NCHW; and
``convert(model, channels_last=False)`` (NCHW inside). Interleaved call by call in one process,
the order rotated every round, medians, each variant tuned on its first call.

    python benchmarks/bench_cpu_layout_policy.py [--models resnet50,mobilenet_v3_large] [--size 224] [--threads 1]
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

DEFAULT_MODELS = ("alexnet,vgg16,googlenet,resnet50,densenet121,"
                  "mobilenet_v3_large,efficientnet_b0,regnet_y_400mf,shufflenet_v2_x1_0,mnasnet1_0")


def _weights_nchw(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every 4-D conv weight of its fused modules made NCHW-contiguous again."""
    for m in model.modules():
        for store in (m._parameters, m._buffers):
            w = store.get("weight")
            if w is not None and w.dim() == 4 and not w.is_contiguous():
                nchw = w.detach().contiguous()
                store["weight"] = torch.nn.Parameter(nchw, requires_grad=False) if isinstance(w, torch.nn.Parameter) else nchw
    return model


def variants(model: torch.nn.Module) -> dict:
    return {"eager": model, "convert()": fastconv.convert(model),
            "convert(), NCHW weights": _weights_nchw(fastconv.convert(model)),
            "channels_last=False": fastconv.convert(model, channels_last=False)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=16)
    args = p.parse_args()
    import torchvision

    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} thread(s), batch {args.batch}, {args.size}x{args.size}, fp32 NCHW in and out, "
          f"median of {args.repeats} interleaved calls; torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    header = None
    for name in args.models.split(","):
        model = randomize_batchnorm(torchvision.models.get_model(name), torch.Generator().manual_seed(0)).eval()
        x = torch.randn(args.batch, 3, args.size, args.size)
        runs = variants(model)
        times = {k: [] for k in runs}
        with torch.inference_mode():
            ref = model(x)
            for k, f in runs.items():  # tunes (auto) and warms up; every variant computes the model
                err = ((f(x) - ref).norm() / ref.norm()).item()
                assert err < 1e-4, f"{name} {k}: relative error {err:.1e}"
                f(x)
            order = list(runs)
            for r in range(args.repeats):
                # each round in another order: a call runs faster or slower after a similar one
                # (caches, the allocator's free blocks), and a fixed order showed that as a 2-5% gap
                for k in order[r % len(order):] + order[:r % len(order)]:
                    t0 = time.perf_counter()
                    runs[k](x)
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        if header is None:
            header = ["model"] + [f"{k} ms" for k in runs] + ["convert() vs eager ×"]
            print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in med.values())
              + f" | {med['eager'] / med['convert()']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
