"""The five networks on the GPU (stage `models` of benchmarks/gpu_check.sh): PyTorch eager
(cuDNN, cudnn.benchmark=True) against fastconv.convert() in bf16 channels_last at batch 1, 32
and 256, plus a torch.compile(converted) column at batch 32.

Same measurement as ``python -m fastconv bench`` (fastconv/_bench.py: random weights with
randomized BatchNorm statistics, error and top-1 against fp32, CUDA events, inputs cycled,
variants interleaved call by call). Cases run in priority order (every model at batch 32,
ResNet-50's compile column, batch 1, batch 256, the other compile columns) and stop when
--budget seconds of work are spent (default 120, so the stage's 150 s deadline is kept on an
H100); JSON and markdown are rewritten after every case. --full: the same cases with more
repetitions and no budget. Without a CUDA device it exits at once with a message (exit code 2).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import gpu_ops  # noqa: E402
from fastconv import _bench  # noqa: E402
from fastconv._table import render_table  # noqa: E402


def plan(models=_bench.DEFAULT_MODELS, full: bool = False) -> List[tuple]:
    """(model, batch, with_compile) in the order they run: what matters most first, so a run cut
    short by its budget still has it — every model at batch 32, one compile column (ResNet-50's,
    the most common reference point), batch 1, batch 256, then the other compile columns."""
    first = [m for m in models if m == "resnet50"][:1] or list(models[:1])
    cases = [(m, 32, False) for m in models] + [(m, 32, True) for m in first]
    cases += [(m, 1, False) for m in models] + [(m, 256, False) for m in models]
    return cases + [(m, 32, True) for m in models if m not in first]


def markdown(report: dict) -> str:
    env = report["env"]
    cfg = report["config"]
    head = [f"GPU: {env.get('device')}; " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()), "",
            f"{cfg['dtype']} channels_last, {cfg['size']}×{cfg['size']}, median of {cfg['repeats']} after "
            f"{cfg['warmup']} warm-up (CUDA events, {_bench.N_INPUTS} inputs cycled, variants interleaved); "
            "error and top-1 against the model in fp32 without TF32", ""]
    rows = report["results"]
    if rows:
        headers, cells = _bench.table_rows(rows)
        head.append(render_table(headers, cells, markdown=True))
    for e in report.get("errors", []):
        head.append(f"\nerror: {e}")
    if report.get("not_run"):
        head.append(f"\nnot run (time budget): {', '.join(report['not_run'])}")
    return "\n".join(head) + "\n"


def write(report: dict, json_path: Optional[str], md_path: Optional[str]) -> None:
    gpu_ops.write(report, json_path, md_path, render=markdown)


def _case_name(case) -> str:
    m, b, c = case
    return f"{m} bs {b}{' compile' if c else ''}"


def run_plan(cfg, cases, budget: float, report: dict, on_update=lambda: None, prepare=_bench.prepare,
             measure=_bench.measure) -> None:
    """Run ``cases`` in order into ``report`` until ``budget`` seconds are spent; the compile
    column joins the row of its model and batch. Each model is built once."""
    t0 = time.time()
    prepared = {}
    for i, case in enumerate(cases):
        if time.time() - t0 > budget:
            report["not_run"] = [_case_name(c) for c in cases[i:]]
            break
        name, batch, with_compile = case
        print(f"[{i + 1}/{len(cases)}, {time.time() - t0:.0f} s] {_case_name(case)}", flush=True)
        try:
            if name not in prepared:
                prepared[name] = prepare(name, cfg)
            row = measure(prepared[name], batch, cfg, with_compile)
            same = [r for r in report["results"] if r["model"] == name and r["batch"] == batch]
            if with_compile and same:  # its eager and fastconv times were taken again beside it: keep the first
                same[0].update({k: v for k, v in row.items() if k.startswith("compile")})
            else:
                report["results"].append(row)
        except Exception as exc:  # one model failing must not hide the others' numbers
            report["errors"].append(f"{_case_name(case)}: {type(exc).__name__}: {exc}")
        on_update()
        if cfg.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--full", action="store_true")
    p.add_argument("--models", default=",".join(_bench.DEFAULT_MODELS))
    p.add_argument("--budget", type=float, default=None, help="seconds of work (default 120; --full: none)")
    p.add_argument("--dtype", default="bf16", choices=["fp32", "tf32", "fp16", "bf16"])
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_models.py: no CUDA device visible; this script times models on the GPU (on the CPU use "
              "`python -m fastconv bench`)", file=sys.stderr)
        return 2
    from fastconv import _devices

    torch.backends.cudnn.benchmark = True
    cfg = _bench.BenchConfig(models=tuple(args.models.split(",")), batches=(1, 32, 256), dtype=args.dtype,
                             channels_last=True, repeats=50 if args.full else 20, warmup=10 if args.full else 5,
                             device="cuda")
    report = {"env": {"device": torch.cuda.get_device_name(), "versions": _devices.versions()},
              "config": _bench.asdict(cfg), "results": [], "errors": [], "not_run": []}
    budget = float("inf") if args.full and args.budget is None else (args.budget or 120)
    run_plan(cfg, plan(cfg.models, args.full), budget, report, lambda: write(report, args.json, args.markdown))
    write(report, args.json, args.markdown)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
