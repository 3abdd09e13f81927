"""CUDA graphs of converted models (gpu_check stage "graphs", ~60 s): batch-1 launch overhead.

For each model: eager cuDNN, the converted model under ``auto`` (eager, one launch per op) and
``fastconv.convert(..., example_input=x, cuda_graph=True)`` (tuned and warmed up before capture,
then one graph replay per call). Checks that replay matches the eager converted forward, that a
new input in the static buffer gives its own result, and that another batch size falls back to
the eager forward; times all three with CUDA events (median of interleaved calls).

    python benchmarks/gpu_graphs.py [--models resnet18 googlenet] [--json F] [--markdown F]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import fastconv  # noqa: E402
from fastconv import _bench  # noqa: E402


def run(name: str, dtype: torch.dtype, repeats: int, batch: int = 1) -> dict:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = _bench.randomize_batchnorm(_bench.torchvision_model(name), gen).eval()
    eager = model.to("cuda", dtype).to(memory_format=torch.channels_last)
    xs = [torch.randn(batch, 3, 224, 224, generator=gen).to("cuda", dtype).contiguous(memory_format=torch.channels_last)
          for _ in range(3)]
    t0 = time.perf_counter()
    fast = fastconv.convert(eager, channels_last=True)
    graphed = fastconv.convert(eager, channels_last=True, example_input=xs[0], cuda_graph=True)
    build_s = time.perf_counter() - t0
    # the same capture tuned by GPU time alone, and PyTorch's own model captured the same way
    graphed_gpu = fastconv.convert(eager, channels_last=True, example_input=xs[0], cuda_graph=True,
                                   graph_tune_by="gpu")
    torch_graph = fastconv.CUDAGraphModel(eager, xs[0], progress=False)
    with torch.inference_mode():
        ref = [fast(x).float() for x in xs]
        got = [graphed(x).float().clone() for x in xs]  # the static output: cloned before the next call
        err = max(_bench.rel_error(g, r) for g, r in zip(got, ref))
        err_gpu = max(_bench.rel_error(graphed_gpu(x).float(), r) for x, r in zip(xs, ref))
        distinct = _bench.rel_error(got[0], got[1])
        other = torch.randn(batch + 1, 3, 224, 224, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
        fallback_err = _bench.rel_error(graphed(other).float(), fast(other).float())
        times = _bench.time_interleaved({"eager": eager, "converted": fast, "graph": graphed,
                                         "graph_gpu": graphed_gpu, "torch_graph": torch_graph}, xs, repeats, 5, "cuda")
    med = {k: statistics.median(v) for k, v in times.items()}
    ok = err < 1e-2 and err_gpu < 1e-2 and distinct > 1e-3 and fallback_err < 1e-2
    return {"model": name, "batch": batch, "dtype": str(dtype)[6:], "eager_ms": med["eager"], "converted_ms": med["converted"],
            "graph_ms": med["graph"], "graph_gpu_tuned_ms": med["graph_gpu"], "torch_graph_ms": med["torch_graph"],
            "replay_rel_err": err, "gpu_tuned_rel_err": err_gpu, "inputs_distinct": distinct,
            "fallback_rel_err": fallback_err, "build_s": build_s, "ok": ok}


def _markdown(rows, dtype: str, device: str = "") -> str:
    lines = [f"CUDA graphs on {device or torch.cuda.get_device_name()}: {dtype} channels_last, 224×224", "",
             "'graph': fastconv.convert(..., cuda_graph=True) tuned by eager wall time (the default); 'graph, GPU-tuned': "
             "graph_tune_by='gpu'; 'torch graph': the eager PyTorch model captured the same way (CUDAGraphModel)", "",
             "| model | batch | eager ms | converted ms | graph ms | graph × eager | graph, GPU-tuned ms | torch graph ms "
             "| best graph × torch graph | replay rel. err | fallback rel. err | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = min(r["graph_ms"], r["graph_gpu_tuned_ms"])
        lines.append(f"| {r['model']} | {r['batch']} | {r['eager_ms']:.3f} | {r['converted_ms']:.3f} | {r['graph_ms']:.3f} | "
                     f"{r['eager_ms'] / r['graph_ms']:.2f} | {r['graph_gpu_tuned_ms']:.3f} | {r['torch_graph_ms']:.3f} | "
                     f"{r['torch_graph_ms'] / best:.2f} | {max(r['replay_rel_err'], r['gpu_tuned_rel_err']):.1e} | "
                     f"{r['fallback_rel_err']:.1e} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def _write(rows, args) -> None:
    if args.markdown:
        open(args.markdown, "w").write(_markdown(rows, args.dtype) + "\n")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["resnet18", "googlenet"])
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, nargs="*", default=[1])
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--full", action="store_true", help="accepted for gpu_check; more repeats")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_graphs.py needs a CUDA device")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    rows = []
    for batch in args.batch:
        for m in args.models:  # the report is rewritten after every model: a stage cut off still reports
            rows.append(run(m, dtype, args.repeats * (3 if args.full else 1), batch))
            _write(rows, args)
    print(_markdown(rows, args.dtype))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
