"""SASS and resource usage of the built fastconv._C extension (no GPU needed).

    python -m benchmarks.cuda_sass_report        # a markdown table per (arch, kernel)

Reads the extension's fatbinary with cuobjdump (shipped in the triton wheel under
triton/backends/nvidia/bin, or the CUDA toolkit's): per kernel its registers, stack, static shared
and local memory, the tensor-core instructions (HGMMA = Hopper warpgroup MMA, HMMA = mma.sync),
TMA loads/stores and any local-memory traffic (STL/LDL). tests/test_cuda_sass.py asserts on it.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections import defaultdict
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_extension() -> Optional[str]:
    import fastconv

    found = sorted(glob.glob(os.path.join(os.path.dirname(fastconv.__file__), "_C*.so")))
    return found[0] if found else None


def find_cuobjdump() -> Optional[str]:
    try:
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.isfile(path):
            return path
    except ImportError:
        pass
    return shutil.which("cuobjdump")


def demangle(names: List[str]) -> Dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def short_name(demangled: str) -> str:
    """A readable kernel label: CUTLASS conv kernels by element type, others by function name."""
    if "ConvUniversal" in demangled:
        # by the warpgroup MMA atom in the name (c++filt gives up on these, so mangled or not)
        m = re.search(r"MMA_\d+x\d+x\d+_F32(TF32|BF16|F16)", demangled)
        dtype = {"TF32": "tf32", "BF16": "bf16", "F16": "fp16"}[m.group(1)] if m else "?"
        return f"cutlass ConvUniversal sm90 fprop {dtype}"
    if "ImplicitGemmConvolution" in demangled:
        # CUTLASS 2.x: the element type follows the activation iterator's tile shape. c++filt gives
        # up on these names, so match the mangled form ("...EEEf" is float) as well.
        i = demangled.find("ActivationTileAccessIterator")
        m = re.search(r"bfloat16_t|half_t|EEEf|, float", demangled[i:i + 160]) if i >= 0 else None
        dtype = {"bfloat16_t": "bf16", "half_t": "fp16"}.get(m.group(0), "tf32") if m else "?"
        few = " few-channels" if "FewChannels" in demangled else ""
        return f"cutlass ImplicitGemmConvolution sm80 fprop {dtype}{few}"
    demangled = demangled.replace("(anonymous namespace)::", "")
    m = re.match(r"(?:void )?([\w:]+?)(?:<|\()", demangled)
    base = m.group(1) if m else demangled[:60]
    targs = re.search(r"<(.*?)>", demangled)
    return f"{base.split('::')[-1]}<{targs.group(1)}>" if targs else base.split("::")[-1]


def sass_by_kernel(so: str, cuobjdump: str) -> Dict[str, Dict[str, str]]:
    """{arch: {mangled kernel name: SASS text}}."""
    text = subprocess.run([cuobjdump, "--dump-sass", so], capture_output=True, text=True, check=True).stdout
    result: Dict[str, Dict[str, str]] = defaultdict(dict)
    arch, name, lines = None, None, []

    def flush():
        if arch and name:
            result[arch][name] = "\n".join(lines)

    for line in text.splitlines():
        m = re.match(r"\s*code for (sm_\w+)", line)
        if m:
            flush()
            arch, name, lines = m.group(1), None, []
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            flush()
            name, lines = m.group(1), []
            continue
        if name:
            lines.append(line)
    flush()
    return dict(result)


def resources_by_kernel(so: str, cuobjdump: str) -> Dict[str, Dict[str, Dict[str, int]]]:
    """{arch: {mangled kernel name: {"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}}}."""
    text = subprocess.run([cuobjdump, "--dump-resource-usage", so], capture_output=True, text=True,
                          check=True).stdout
    result: Dict[str, Dict[str, Dict[str, int]]] = defaultdict(dict)
    arch, name = None, None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (sm_\w+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        if name and "REG:" in line:
            result[arch][name] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            name = None
    return dict(result)


def instruction_summary(sass: str) -> Dict[str, int]:
    keys = {
        "HGMMA": r"\bHGMMA\.", "HMMA": r"\bHMMA\.", "UTMALDG": r"\bUTMALDG\b", "UTMASTG": r"\bUTMASTG\b",
        "IM2COL": r"\bUTMALDG\.\w+\.IM2COL\b", "STL": r"\bSTL(\.|\s)", "LDL": r"\bLDL(\.|\s)",
        "LDG.128": r"\bLDG\.E\.128\b", "STG.128": r"\bSTG\.E\.128\b",
    }
    return {k: len(re.findall(p, sass)) for k, p in keys.items()}


def report() -> str:
    so, tool = find_extension(), find_cuobjdump()
    if not so or not tool:
        return f"extension: {so}, cuobjdump: {tool}: nothing to report"
    sass, res = sass_by_kernel(so, tool), resources_by_kernel(so, tool)
    names = sorted({n for a in sass.values() for n in a})
    pretty = demangle(names)
    rows = ["| arch | kernel | regs | stack | static smem | local | HGMMA | HMMA | TMA ld (im2col) | TMA st | STL/LDL | LDG/STG.128 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch in sorted(sass):
        for name in sorted(sass[arch], key=lambda n: short_name(pretty[n])):
            r = res.get(arch, {}).get(name, {})
            s = instruction_summary(sass[arch][name])
            rows.append(
                f"| {arch} | {short_name(pretty[name])} | {r.get('REG', '?')} | {r.get('STACK', '?')} | "
                f"{r.get('SHARED', '?')} | {r.get('LOCAL', '?')} | {s['HGMMA']} | {s['HMMA']} | "
                f"{s['UTMALDG']} ({s['IM2COL']}) | {s['UTMASTG']} | {s['STL']}/{s['LDL']} | {s['LDG.128']}/{s['STG.128']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(report())
    try:
        import torch
        import fastconv  # noqa: F401  (loads the extension)

        print()
        print(torch.ops.fastconv._cuda_kernel_info())
    except Exception as exc:  # noqa: BLE001
        print(f"(_cuda_kernel_info unavailable: {exc})")
