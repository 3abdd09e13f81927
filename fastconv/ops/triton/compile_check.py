"""Compile every Triton kernel config for real GPUs, without a GPU (DESIGN §6.3).

Run as ``python -m fastconv.ops.triton.compile_check [--all] [--jobs N]`` in a process WITHOUT
``TRITON_INTERPRET`` (under the interpreter ``@triton.jit`` gives an object ``triton.compile``
cannot take). Prints one JSON line per (kernel, config, dtype, arch) with registers, spills
and shared memory, plus a ``problems`` list (empty when the variant is fine):

- the PTX uses tensor cores for fp16/bf16 (``mma`` on sm_80; ``wgmma`` on sm_90 where the
  tile allows warpgroup MMA, else ``mma``),
- shared memory fits the card's per-block opt-in limit,
- ptxas reports no spill stores.

Registry: each module in ``MODULES`` exposes ``compile_specs()`` returning dicts with keys
kernel, config, dtype ("fp32"/"fp16"/"bf16"), fn (the raw @triton.jit function), signature,
constexprs, attrs, options (num_warps, num_stages) and optionally wgmma_eligible (default
True) and tensor_cores (default True; False for kernels without tl.dot). Add a kernel by appending its module name to ``MODULES``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import importlib
import inspect
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Tuple

MODULES: List[str] = [
    "fastconv.ops.triton.conv1x1",
    "fastconv.ops.triton.conv2d_relu",
    "fastconv.ops.triton.max_pool2d",
    "fastconv.ops.triton.dense_concat",
]

# Max dynamic shared memory per block (opt-in), bytes.
ARCHS: Dict[int, Dict] = {
    80: dict(name="sm_80", ptxas_arch="sm_80", max_shared=166912),
    90: dict(name="sm_90", ptxas_arch="sm_90a", max_shared=232448),
}


def _all_specs() -> List[Dict]:
    specs = []
    for name in MODULES:
        specs.extend(importlib.import_module(name).compile_specs())
    return specs


def select(specs: List[Dict], full: bool = False) -> List[Tuple[int, int]]:
    """(spec index, arch) pairs to compile.

    ``full``: everything. Default (the test's budget): every (kernel, config) once per arch,
    its dtype rotating over the configs (and shifted between the archs), so every config
    compiles on every arch and every dtype appears on every arch when a kernel has ≥ 3 configs.
    """
    archs = sorted(ARCHS)
    if full:
        return [(i, a) for a in archs for i in range(len(specs))]
    groups: Dict[Tuple[str, str], List[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault((spec["kernel"], spec["config"]), []).append(i)
    picked = []
    per_kernel: Dict[str, int] = {}
    for (kernel, _), indices in groups.items():
        rank = per_kernel.get(kernel, 0)
        per_kernel[kernel] = rank + 1
        for shift, arch in enumerate(archs):
            picked.append((indices[(rank + shift) % len(indices)], arch))
    return picked


def _ptxas_info(ptx: str, arch: str) -> Dict[str, int]:
    """Registers, spills and stack from ``ptxas -v`` (the ptxas inside the triton wheel, run
    as Triton runs it): compiled metadata has no register count until loaded on a GPU."""
    from triton.backends.nvidia.compiler import get_ptxas

    # triton 3.3 and >= 3.5 take the target (Blackwell has a ptxas of its own), 3.4 takes nothing;
    # 3.3 returns a (path, version) tuple, later ones a tool with .path
    found = get_ptxas(int(re.sub(r"\D", "", arch))) if inspect.signature(get_ptxas).parameters else get_ptxas()
    ptxas = found.path if hasattr(found, "path") else found[0]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}", src, "-o", src + ".o"],
                              capture_output=True, text=True, check=True)
    log = proc.stderr + proc.stdout

    def grab(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return dict(regs=grab(r"Used (\d+) registers"), spill_stores=grab(r"(\d+) bytes spill stores"),
                spill_loads=grab(r"(\d+) bytes spill loads"), stack=grab(r"(\d+) bytes stack frame"))


def compile_one(job: Tuple[int, int]) -> Dict:
    index, cc = job
    import triton
    from triton.backends.compiler import GPUTarget

    spec = _all_specs()[index]
    arch = ARCHS[cc]
    result = dict(kernel=spec["kernel"], config=spec["config"], dtype=spec["dtype"], arch=arch["name"])
    start = time.perf_counter()
    try:
        src = triton.compiler.ASTSource(fn=spec["fn"], signature=spec["signature"],
                                        constexprs=spec["constexprs"], attrs=spec.get("attrs"))
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(spec["options"]))
    except Exception as exc:  # reported as a problem, so one bad variant doesn't hide the others
        result.update(problems=[f"compile failed: {type(exc).__name__}: {str(exc)[:2000]}"])
        return result
    result["compile_s"] = round(time.perf_counter() - start, 2)
    ptx = compiled.asm["ptx"]
    result.update(shared=compiled.metadata.shared, **_ptxas_info(ptx, arch["ptxas_arch"]))
    result["wgmma"] = bool(re.search(r"\bwgmma\.", ptx))
    result["mma"] = bool(re.search(r"\bmma\.sync\.", ptx))
    problems = []
    want = None
    if spec["dtype"] in ("fp16", "bf16") and spec.get("tensor_cores", True):
        want = "wgmma" if cc >= 90 and spec.get("wgmma_eligible", True) else "mma"
    result["expect"] = want
    if want is not None:
        if not result[want]:
            problems.append(f"PTX has no {want} instruction: tl.dot is not on tensor cores")
    if result["shared"] > arch["max_shared"]:
        problems.append(f"shared memory {result['shared']} B exceeds {arch['name']}'s {arch['max_shared']} B")
    if result["spill_stores"] > 0:
        problems.append(f"ptxas spills {result['spill_stores']} bytes (regs {result['regs']})")
    result["problems"] = problems
    return result


def run(full: bool = False, jobs: int | None = None) -> Iterator[Dict]:
    """Yield one result per compiled variant, in completion order."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_check must run without TRITON_INTERPRET=1 (the interpreter's @triton.jit "
                           "objects cannot be compiled); run it in a subprocess with that variable removed")
    picked = select(_all_specs(), full)
    jobs = jobs or os.cpu_count() or 1
    # spawn: a clean interpreter per worker (no forked Triton/LLVM state); compilation is
    # CPU-bound, so one worker per core.
    with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for result in pool.map(compile_one, picked):
            yield result


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every config × dtype × arch (default: each config once per arch)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile processes (default: CPU count)")
    args = parser.parse_args(argv)
    failed = 0
    for result in run(full=args.all, jobs=args.jobs):
        failed += bool(result["problems"])
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
