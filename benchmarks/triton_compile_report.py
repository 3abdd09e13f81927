"""Markdown table of registers, shared memory and spills of every Triton kernel variant.

    python benchmarks/triton_compile_report.py [--quick] [--jobs N] > benchmarks/RESULTS_triton_compile.md

Runs ``fastconv.ops.triton.compile_check`` (every config × dtype × arch unless --quick) in a
subprocess without TRITON_INTERPRET; needs no GPU. Numbers come from ptxas -v (the ptxas in
the triton wheel) on Triton's PTX; shared memory from the compiled kernel's metadata.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH_LIMIT = {"sm_80": 166912, "sm_90": 232448}


def collect(quick: bool, jobs: int | None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "fastconv.ops.triton.compile_check"] + ([] if quick else ["--all"])
    if jobs:
        cmd += ["--jobs", str(jobs)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not rows:
        raise SystemExit(f"compile_check produced no results (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return rows


def table(rows) -> str:
    order = {"fp16": 0, "bf16": 1, "fp32": 2}
    rows = sorted(rows, key=lambda r: (r["kernel"], r["arch"], r["config"], order.get(r["dtype"], 9)))
    out = ["| kernel | config (BMxBNxBK_warps_stages) | dtype | arch | registers | shared memory (B) | spill stores / loads (B) | tensor-core op | problems |",
           "|---|---|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        op = "wgmma" if r.get("wgmma") else ("mma.sync" if r.get("mma") else "FMA")
        if r["dtype"] == "fp32" and op != "FMA":
            op += " (tf32)"
        out.append(f"| {r['kernel']} | {r['config']} | {r['dtype']} | {r['arch']} | {r.get('regs', '-')} | "
                   f"{r.get('shared', '-')} | {r.get('spill_stores', '-')} / {r.get('spill_loads', '-')} | {op} | "
                   f"{'; '.join(r['problems']) or 'none'} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each config once per arch (the test's selection)")
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args()
    import triton

    start = time.perf_counter()
    rows = collect(args.quick, args.jobs)
    elapsed = time.perf_counter() - start
    bad = [r for r in rows if r["problems"]]
    print("# Triton kernels: compile report (no GPU needed)\n")
    print(f"triton {triton.__version__}, Python {platform.python_version()}; targets sm_80 (A100, shared limit "
          f"{ARCH_LIMIT['sm_80']} B) and sm_90a (H100, {ARCH_LIMIT['sm_90']} B); {len(rows)} variants compiled in "
          f"{elapsed:.0f} s on {os.cpu_count()} cores. Registers and spills from `ptxas -v`; flags: bias + residual + "
          "ReLU, NHWC activations and OHWI weights (unit channel strides, 16-divisible strides; a 3-channel "
          "stem's unaligned strides for conv2d_relu's `_flatk` configs), fp32 as tf32.\n")
    print(table(rows))
    print(f"\n{len(bad)} variant(s) with problems." if bad else "\nNo variant spills, every one fits shared memory, "
          "and every fp16/bf16 variant uses tensor cores (wgmma on sm_90 for tiles of ≥ 64 rows and 4k warps).")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
