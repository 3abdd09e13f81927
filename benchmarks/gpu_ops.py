"""Per-op GPU timings at the five networks' shapes (stage `ops` of benchmarks/gpu_check.sh).

For each op and shape: PyTorch/cuDNN (fastconv.ops.reference), fastconv's triton backend and,
where it is available, its cuda backend (also with the CUTLASS 2.x kernels forced,
fastconv-cuda-sm80, and for fp32 with the SM90 TF32 kernel on, fastconv-cuda-sm90tf32); bf16 channels_last and fp32 (TF32 allowed, as PyTorch
does by default). Median time from triton.testing.do_bench (CUDA events, L2 flushed before every
call, inputs cycled), providers alternated in rounds; TFLOP/s or GB/s and the fraction of the
card's peak; relative error against the baseline computed in fp32 without TF32.

Default: a few shapes per network (shapes.sample) at batch 32, within ~120 s of work on an H100
(--budget; cases left over are listed as not run). --full: every shape, batch 32, both dtypes.
JSON and markdown are rewritten after every case, so a run cut off by the stage deadline still
reports. On a machine without a CUDA device it exits at once with a message (exit code 2).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import shapes as S  # noqa: E402
from benchmarks._env import set_env  # noqa: E402
from fastconv._table import render_table  # noqa: E402

# CONV1X1_PROLOGUE_SHAPES: DenseNet's BN-ReLU prologue on the cuda backend (a fused CUDA kernel writing
# a temporary, then the CUTLASS GEMM) against Triton's (applied as the operand is loaded).
KINDS = ("CONV_SHAPES", "CONV1X1_SHAPES", "CONV1X1_PROLOGUE_SHAPES", "POOL_SHAPES", "DENSE_BLOCK_SHAPES")
# fastconv-cuda-sm80: the cuda backend with FASTCONV_CUTLASS_SM80=force, i.e. the CUTLASS 2.x kernels
# (on Hopper in place of the SM90 kernel); fastconv-cuda-sm90tf32: with FASTCONV_CUTLASS_SM90_TF32=1,
# the SM90 kernel's TF32 instantiation (fp32 only). Convs only: the other ops have no such kernels.
PROVIDERS = ("torch", "fastconv-triton", "fastconv-cuda", "fastconv-cuda-sm80", "fastconv-cuda-sm90tf32")
PROVIDER_ENV = {"fastconv-cuda-sm80": ("FASTCONV_CUTLASS_SM80", "force"),
                "fastconv-cuda-sm90tf32": ("FASTCONV_CUTLASS_SM90_TF32", "1")}
CUTLASS_OPS = ("conv2d_relu", "conv1x1")


def plan(full: bool, dtypes=("bf16", "fp32"), kinds=KINDS) -> List[tuple]:
    """(dtype, shape) pairs in the order they run: bf16 over every op first, then fp32."""
    out = []
    for dtype in dtypes:
        for kind in kinds:
            items = getattr(S, kind)
            if not full:
                items = S.sample(items, per_net=2 if dtype == "bf16" else 1)
            out += [(dtype, s) for s in items]
    return out


def peak_key(dtype: str, allow_tf32: bool) -> str:
    return "tf32" if dtype == "fp32" and allow_tf32 else dtype


def row_cells(r: dict) -> List[str]:
    cells = [r["op"], r["shape"], r["dtype"], r["provider"]]
    if "error" in r:
        return cells + ["", "", "", "", r["error"][:80], "", ""]
    graph = [f"{r['graph_ms'] * 1e3:.1f}" if r.get("graph_ms") else r.get("graph_error", "")[:40],
             f"{r['graph_speedup_vs_torch']:.2f}" if r.get("graph_speedup_vs_torch") else ""]
    rate = f"{r['tflops']:.1f} TFLOP/s" if r.get("tflops") is not None else f"{r['gbps']:.0f} GB/s"
    frac = r.get("fraction_of_peak")
    return cells + [f"{r['ms'] * 1e3:.1f}", rate, "" if frac is None else f"{100 * frac:.0f}%",
                    f"{r['speedup_vs_torch']:.2f}" if r.get("speedup_vs_torch") else "",
                    f"{r['rel_err']:.1e}" if "rel_err" in r else "-"] + graph  # the d2d-copy yardstick has no error


HEADERS = ["op", "shape", "dtype", "provider", "µs", "rate", "of peak", "× torch", "rel. error", "graph µs",
           "graph × torch"]


def markdown(report: dict) -> str:
    env = report["env"]
    lines = [f"GPU: {env.get('device')}; " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()), "",
             f"batch {report['batch']}, median of triton.testing.do_bench (L2 flushed) over alternating rounds, "
             "which includes each call's host overhead where it exceeds the flush; 'graph': GPU time alone, "
             f"{GRAPH_CALLS} calls captured in one CUDA graph (inputs cycled, L2 not flushed), median of replays; "
             "fp32 rows allow TF32 (PyTorch's default for convs); error against the baseline in fp32 without TF32; "
             f"peak: {env.get('peak_name', 'unknown card')}", ""]
    lines.append(render_table(HEADERS, [row_cells(r) for r in report["results"]], markdown=True))
    if report.get("not_run"):
        lines += ["", f"not run (time budget): {len(report['not_run'])} cases"]
    if report.get("errors"):
        lines += ["", "cases that raised:"] + [f"- {e}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def write(report: dict, json_path: Optional[str], md_path: Optional[str], render=None) -> None:
    """Rewrite the JSON and markdown reports (``render``: the markdown renderer, this script's by default;
    benchmarks/gpu_models.py passes its own)."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
    if md_path:
        with open(md_path, "w") as f:
            f.write((render or markdown)(report))


def _time_providers(fns: Dict[str, object], inputs, rounds: int = 3) -> Dict[str, float]:
    """Median ms per provider: do_bench rounds alternating between the providers."""
    import itertools

    import torch
    from triton.testing import do_bench

    times, failed = {name: [] for name in fns}, {}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(reversed(list(fns)))):
            if name in failed:
                continue
            cycle = itertools.cycle(inputs)
            fn = fns[name]
            try:
                times[name].append(do_bench(lambda: fn(*next(cycle)), warmup=5, rep=20, return_mode="median"))
            except Exception as exc:  # reported in the provider's row; the other providers go on
                failed[name] = f"{type(exc).__name__}: {exc}"
    torch.cuda.synchronize()
    return {**{name: statistics.median(v) for name, v in times.items() if name not in failed}, **failed}


GRAPH_CALLS = 20


def _time_graphs(fns: Dict[str, object], inputs, rounds: int = 5) -> Dict[str, object]:
    """Median GPU ms per call without the host: GRAPH_CALLS calls (inputs cycled) captured in one
    CUDA graph per provider and replayed in alternating rounds. A provider that cannot be captured
    maps to its error message."""
    import torch

    from fastconv._graphs import capture

    graphs, out = {}, {}
    for name, fn in fns.items():
        try:
            graphs[name], _ = capture(lambda fn=fn: [fn(*inputs[i % len(inputs)]) for i in range(GRAPH_CALLS)],
                                      torch.device("cuda", torch.cuda.current_device()))
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    times = {name: [] for name in graphs}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for r in range(rounds):
        for name in (list(graphs) if r % 2 == 0 else list(reversed(list(graphs)))):
            graphs[name].replay()
            start.record()
            graphs[name].replay()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) / GRAPH_CALLS)
    out.update({name: statistics.median(v) for name, v in times.items()})
    return out


def _provider_env(provider: str):
    """The provider's kernel switch (PROVIDER_ENV) set while its call runs, or nothing."""
    return set_env(*PROVIDER_ENV[provider]) if provider in PROVIDER_ENV else contextlib.nullcontext()


def run_case(dtype_name: str, shape, batch: int, spec, device: str = "cuda", providers=PROVIDERS,
             timer=_time_providers, graph_timer=_time_graphs) -> List[dict]:
    """Rows for one shape: every provider's time, rate, fraction of peak and error (or why it has none).
    ``device``, ``providers`` and ``timer`` let the tests run this on the CPU."""
    import torch

    import fastconv
    from benchmarks._ops import make_case, rel_error, torch_result_fp32
    from fastconv._devices import DTYPES

    status = fastconv.backend_status()
    case = make_case(shape, batch, device, DTYPES[dtype_name], channels_last=True)
    ref = torch_result_fp32(case)
    rows, fns = [], {}
    base = {"op": case.op, "shape": S.shape_id(shape), "nets": list(shape.nets), "dtype": dtype_name, "batch": batch}
    for provider in providers:
        backend = None if provider == "torch" else provider.split("-")[1]
        if provider in PROVIDER_ENV and (case.op not in CUTLASS_OPS or
                                         (provider.endswith("-sm90tf32") and dtype_name != "fp32")):
            continue
        if backend and status[backend] != "available":
            rows.append({**base, "provider": provider, "error": f"skipped: {status[backend]}"})
            continue
        fn = case.torch_fn if provider == "torch" else case.fastconv_fn

        def call(*args, _fn=fn, _backend=backend, _provider=provider):
            with torch.inference_mode(), fastconv.use_backend(_backend or "auto"), _provider_env(_provider):
                return _fn(*args)
        try:
            y = call(*case.inputs[0])  # also the warm-up that autotunes
            if device == "cuda":
                torch.cuda.synchronize()
            rows.append({**base, "provider": provider, "rel_err": rel_error(y, ref)})
            fns[provider] = call
        except Exception as exc:  # one backend failing a shape must not hide the others' numbers
            rows.append({**base, "provider": provider, "error": f"{type(exc).__name__}: {exc}"})
    if not case.flops and fns and device == "cuda":
        # bandwidth yardstick for the memory-bound ops: a device-to-device copy moving the same
        # bytes (half read, half written); DESIGN goal for max-pool: >= 85% of its GB/s
        src = torch.empty(max(case.moved // 2, 1), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        fns["d2d-copy"] = lambda *args: dst.copy_(src)
        rows.append({**base, "provider": "d2d-copy"})
    times = timer(fns, case.inputs) if fns else {}
    graph_times = graph_timer(fns, case.inputs) if fns and graph_timer else {}
    peak = spec.peak[peak_key(dtype_name, torch.backends.cudnn.allow_tf32)] if spec else None
    for r in rows:
        if r["provider"] not in times:
            continue
        ms = times[r["provider"]]
        if isinstance(ms, str):  # the timer could not run it (e.g. an error raised while timing)
            r["error"] = f"timing failed: {ms}"
            continue
        r["ms"] = ms
        if case.flops:
            r["tflops"] = case.flops / ms / 1e9
            r["fraction_of_peak"] = case.flops / (ms * 1e-3) / peak if peak else None
        else:
            r["gbps"] = case.moved / ms / 1e6
            r["fraction_of_peak"] = case.moved / (ms * 1e-3) / spec.bandwidth if spec else None
        if isinstance(times.get("torch"), float):
            r["speedup_vs_torch"] = times["torch"] / ms
        if isinstance(times.get("d2d-copy"), float):
            r["fraction_of_copy_bandwidth"] = times["d2d-copy"] / ms
        g = graph_times.get(r["provider"])
        if isinstance(g, float):
            r["graph_ms"] = g
            if isinstance(graph_times.get("torch"), float):
                r["graph_speedup_vs_torch"] = graph_times["torch"] / g
        elif g is not None:
            r["graph_error"] = g
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--full", action="store_true", help="every shape of every op, both dtypes")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--budget", type=float, default=None, help="seconds of work before the remaining cases are "
                   "skipped (default 120; --full: 3600)")
    p.add_argument("--ops", default=",".join(KINDS), help=f"which shape lists, of {','.join(KINDS)}")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--providers", default=",".join(PROVIDERS), help=f"which of {','.join(PROVIDERS)} "
                   "(gpu_check times the never-run kernels in a process of their own)")
    args = p.parse_args(argv)
    providers = tuple(args.providers.split(","))
    unknown = sorted(set(providers) - set(PROVIDERS))
    if unknown:
        p.error(f"unknown providers {unknown}")
    import torch

    if not torch.cuda.is_available():
        print("gpu_ops.py: no CUDA device visible; this script times GPU kernels (for CPU timings use "
              "`pytest benchmarks` or `python -m fastconv bench`)", file=sys.stderr)
        return 2
    import fastconv  # noqa: F401
    from fastconv import _devices

    torch.backends.cudnn.benchmark = True
    spec = _devices.current_gpu_spec()
    env = {"device": torch.cuda.get_device_name(), "versions": _devices.versions(),
           "peak_name": spec.name if spec else None, "backends": fastconv.backend_status()}
    report = {"env": env, "batch": args.batch, "full": args.full, "results": [], "not_run": []}
    budget = args.budget if args.budget is not None else (3600 if args.full else 120)
    t0 = time.time()
    cases = plan(args.full, tuple(args.dtypes.split(",")), tuple(args.ops.split(",")))
    for i, (dtype_name, shape) in enumerate(cases):
        if time.time() - t0 > budget:
            report["not_run"] = [f"{d} {S.shape_id(s)}" for d, s in cases[i:]]
            break
        print(f"[{i + 1}/{len(cases)}, {time.time() - t0:.0f} s] {dtype_name} {S.shape_id(shape)}", flush=True)
        try:
            report["results"] += run_case(dtype_name, shape, args.batch, spec, providers=providers)
            torch.cuda.empty_cache()
        except Exception as exc:  # (a kernel that trapped leaves the CUDA context unusable: the next cases say so)
            report.setdefault("errors", []).append(f"{dtype_name} {S.shape_id(shape)}: {type(exc).__name__}: {exc}")
            print(report["errors"][-1], flush=True)
        write(report, args.json, args.markdown)
    write(report, args.json, args.markdown)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
