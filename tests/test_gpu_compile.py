"""Every Triton kernel config compiles for sm_80 and sm_90, without a GPU (DESIGN §6.3).

Runs ``fastconv.ops.triton.compile_check`` in a subprocess whose environment has no
TRITON_INTERPRET (conftest.py sets it in this process when there is no GPU, and under the
interpreter @triton.jit objects can't be compiled). Checks, per variant: tensor-core
instructions in the PTX (mma on sm_80, wgmma on sm_90 where the tile allows it) for fp16/bf16,
shared memory within the card's limit, no ptxas spill stores; and that every config of every
registered kernel was compiled on both archs.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
if "constexprs" not in inspect.signature(triton.compiler.ASTSource.__init__).parameters:  # triton 3.2
    pytest.skip("this triton's ASTSource takes no constexprs=, the API compile_check is written for "
                "(CI's triton 3.8 has it)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
MAX_SHARED = {"sm_80": 166912, "sm_90": 232448}


@pytest.fixture(scope="module")
def results():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, "-m", "fastconv.ops.triton.compile_check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"compile_check printed no results (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    for r in sorted(lines, key=lambda r: (r["kernel"], r["arch"], r["config"])):  # visible with -s / on failure
        print(f"{r['kernel']:14} {r['arch']} {r['config']:20} {r['dtype']:5} regs={r.get('regs')} "
              f"spill={r.get('spill_stores')} shared={r.get('shared')} {r.get('compile_s')}s")
    return proc, lines


def test_every_variant_compiles_cleanly(results):
    proc, lines = results
    problems = [f"{r['kernel']} {r['config']} {r['dtype']} {r['arch']}: {p}" for r in lines for p in r["problems"]]
    assert not problems, "\n".join(problems)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for r in lines:
        what = f"{r['kernel']} {r['config']} {r['dtype']} {r['arch']}"
        assert r["shared"] <= MAX_SHARED[r["arch"]], what
        assert r["spill_stores"] == 0, what
        assert r["regs"] > 0, f"{what}: no register count parsed from ptxas"
        if r["expect"] is not None:
            assert r["wgmma"] or r["mma"], f"{what}: tl.dot not on tensor cores"
            if r["arch"] == "sm_80":
                assert r["mma"] and not r["wgmma"], what


def test_every_config_on_every_arch(results):
    from fastconv.ops.triton import compile_check

    _, lines = results
    compiled = {(r["kernel"], r["config"], r["arch"]) for r in lines}
    for module in compile_check.MODULES:
        for spec in importlib.import_module(module).compile_specs():
            for arch in ("sm_80", "sm_90"):
                assert (spec["kernel"], spec["config"], arch) in compiled, (spec["kernel"], spec["config"], arch)


def test_conv2d_relu_uses_wgmma_on_hopper(results):
    """The large-tile fp16/bf16 variants must use warpgroup MMA on sm_90 (DESIGN §4)."""
    _, lines = results
    hopper = [r for r in lines if r["kernel"] == "conv2d_relu" and r["arch"] == "sm_90" and r["dtype"] in ("fp16", "bf16")]
    assert hopper, "no fp16/bf16 conv2d_relu variant compiled for sm_90"
    eligible = [r for r in hopper if r["expect"] == "wgmma"]
    assert eligible, "no wgmma-eligible conv2d_relu config was compiled for sm_90 in fp16/bf16"
    assert all(r["wgmma"] for r in eligible), [(r["config"], r["dtype"], r["wgmma"]) for r in eligible]
