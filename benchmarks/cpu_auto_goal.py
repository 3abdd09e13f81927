"""The auto backend's CPU goal: converted model under ``auto`` vs torch eager, fp32 (or bf16), 224×224.

eval(), inference_mode, batch 8 for alexnet and googlenet, 4 for resnet50 and densenet121, 2 for
vgg16; random weights with randomized BatchNorm statistics (so folding matters). The converted
model is tuned first (fastconv.tune, timed and reported), then eager and fastconv run interleaved
call by call (order alternating), inputs cycled, and the medians compared. Prints a markdown table
naming the machine, the thread count and the load average before and after.

``--dtype bfloat16``: eager is the model cast to bfloat16 and channels_last (eager's fastest bf16
form on a oneDNN CPU), fastconv is ``convert(model, dtype=torch.bfloat16)``; both take bf16
channels_last inputs, and both are compared with the float32 eager model ("rel. error vs fp32").

    python benchmarks/cpu_auto_goal.py [--repeats 7] [--threads 2] [--models resnet50 ...] [--dtype bfloat16] [--out FILE]
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import fastconv  # noqa: E402
from fastconv import _autotune, _bench  # noqa: E402

GOALS = {"alexnet": (8, 1.0), "googlenet": (8, 1.2), "resnet50": (4, 1.2), "densenet121": (4, 1.2), "vgg16": (2, 1.0)}


def measure(name: str, batch: int, repeats: int, gen: torch.Generator, compare_nchw: bool = False,
            dtype: torch.dtype = torch.float32) -> dict:
    torch.manual_seed(0)
    eager = _bench.randomize_batchnorm(_bench.torchvision_model(name), gen).eval()
    fp32_inputs = [torch.randn(batch, 3, 224, 224, generator=gen) for _ in range(2)]
    with torch.inference_mode():
        refs = [eager(x) for x in fp32_inputs]  # the float32 eager model: the reference for both
    inputs, eager_rel = fp32_inputs, 0.0
    # default layout policy: channels_last inside on the CPU
    fast = fastconv.convert(eager, dtype=None if dtype == torch.float32 else dtype)
    nchw = fastconv.convert(eager, channels_last=False) if compare_nchw else None
    if dtype != torch.float32:
        eager = copy.deepcopy(eager).to(dtype=dtype, memory_format=torch.channels_last)
        inputs = [x.to(dtype).contiguous(memory_format=torch.channels_last) for x in fp32_inputs]
        with torch.inference_mode():
            eager_rel = max(_bench.rel_error(eager(x).float(), r) for x, r in zip(inputs, refs))
    with torch.inference_mode():
        t0 = time.perf_counter()
        tuned = fastconv.tune(fast, inputs[0])
        tune_s = time.perf_counter() - t0
        ys = [fast(x).float() for x in inputs]
        max_abs = max((y - r).abs().max().item() for y, r in zip(ys, refs))
        rel = max(_bench.rel_error(y, r) for y, r in zip(ys, refs))
        with fastconv.kernel_stats() as stats:
            fast(inputs[0])
        fns = {"eager": eager, "auto": fast}
        if nchw is not None:
            fastconv.tune(nchw, inputs[0])
            fns["auto_nchw"] = nchw
        times = _bench.time_interleaved(fns, inputs, repeats, 1, "cpu")
    e, a = statistics.median(times["eager"]), statistics.median(times["auto"])
    own = {}
    for (op, t), fl in stats.flops.items():
        if op in ("conv2d_relu", "conv1x1"):
            own[t] = own.get(t, 0) + fl
    total = sum(own.values()) or 1
    return {"model": name, "batch": batch, "eager_ms": e, "auto_ms": a, "speedup": e / a, "max_abs": max_abs,
            "rel": rel, "eager_rel": eager_rel, "tune_s": tune_s, "signatures": tuned["signatures"],
            "mix": ", ".join(f"{t} {100 * v / total:.0f}%" for t, v in sorted(own.items())),
            "copied_mb": stats.copied_bytes / 1e6, "eager_all": times["eager"], "auto_all": times["auto"],
            "nchw_ms": statistics.median(times["auto_nchw"]) if nchw is not None else None,
            "nchw_all": times.get("auto_nchw")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(GOALS))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the markdown here")
    ap.add_argument("--compare-nchw", action="store_true",
                    help="also time convert(channels_last=False) (activations NCHW inside), interleaved")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    if dtype != torch.float32 and args.compare_nchw:
        ap.error("--compare-nchw is for float32")
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name in args.models:
        batch, _ = GOALS[name]
        r = measure(name, batch, args.repeats, gen, args.compare_nchw, dtype)
        rows.append(r)
        print(f"{name}: eager {r['eager_ms']:.0f} ms, auto {r['auto_ms']:.0f} ms, {r['speedup']:.2f}x "
              f"(max |diff| {r['max_abs']:.1e}; {r['mix']})", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    lines = [
        f"machine: {_autotune.device_name(torch.device('cpu'))} ({os.cpu_count()} logical CPUs), "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, fastconv {fastconv.__version__}, "
        f"Python {platform.python_version()}",
        f"load average (1/5/15 min): before {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, "
        f"after {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f}",
        ("fp32 NCHW" if dtype == torch.float32 else f"{args.dtype} channels_last (eager: the model in {args.dtype}, "
         "channels_last)") + f" 224×224 inputs, eval + inference_mode; median of {args.repeats} interleaved calls per model "
        "after 1 warm-up, 2 inputs cycled; the converted model (convert's default layout policy: channels_last "
        "inside on the CPU) tuned first (fastconv.tune)",
        "",
        "| model | batch | eager ms | auto ms | speedup | goal | met | max abs diff | rel. error vs fp32 (eager / auto) | "
        "conv FLOPs by tactic | copied MB/call | tune s (signatures) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if args.compare_nchw:
        lines[-2] = lines[-2].replace(" | speedup |", " | speedup | auto NCHW-inside ms (speedup) |")
        lines[-1] = lines[-1] + "---|"
    for r in rows:
        goal = GOALS[r["model"]][1]
        nchw = (f" {r['nchw_ms']:.0f} ({r['eager_ms'] / r['nchw_ms']:.2f}×) |" if r["nchw_ms"] else "")
        lines.append(f"| {r['model']} | {r['batch']} | {r['eager_ms']:.0f} | {r['auto_ms']:.0f} | "
                     f"{r['speedup']:.2f}× |{nchw} ≥ {goal:.1f}× | {'yes' if r['speedup'] >= goal else 'no'} | "
                     f"{r['max_abs']:.1e} | {r['eager_rel']:.1e} / {r['rel']:.1e} | {r['mix']} | {r['copied_mb']:.1f} | {r['tune_s']:.0f} ({r['signatures']}) |")
    lines += ["", "Every timed call (ms, in order; eager and auto interleaved):", ""]
    for r in rows:
        nchw = f", auto NCHW-inside {[round(t) for t in r['nchw_all']]}" if r["nchw_all"] else ""
        lines.append(f"- {r['model']}: eager {[round(t) for t in r['eager_all']]}, auto {[round(t) for t in r['auto_all']]}"
                     f"{nchw}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
