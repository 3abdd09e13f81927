"""Host cost per conv call in instructions: benchmarks/host_overhead.py's paths counted by valgrind.

On the shared 2-core VM a wall-clock µs per call moves by ±30% between identical runs, more than
any change to the Python around a kernel; the number of instructions executed does not move. This
runs host_overhead's paths (PyTorch's conv + ReLU, fastconv's functional and a converted layer
under each backend; batch 1, 16 → 16 channels, 8×8, 3×3 and 1×1) in a child under valgrind's
callgrind, counting only the timed calls (``callgrind_control`` switches the counting on and off
around each path), and reports instructions per call. One thread, so that oneDNN's thread pool
does not add its own noise. Under valgrind oneDNN has no AVX-512 or AMX: its kernels run other
code than natively, so compare rows of the same kernel across commits, not kernels with each other.

    python benchmarks/host_instructions.py [--calls 50] [--dtype fp32|bf16] [--markdown F] [--json F]

Needs valgrind (``apt install valgrind``); about two minutes.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import host_overhead  # noqa: E402

DTYPES = ("fp32", "bf16")


def _counted(fn, calls: int, device: str, label: str) -> str:
    """In the child: warm up, then count ``calls`` calls into a dump named ``label``."""
    pid = str(os.getpid())

    def control(*args):
        subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True)

    for _ in range(20):
        fn()
    control("--zero")
    control("--instr=on")
    for _ in range(calls):
        fn()
    control("--instr=off")
    control(f"--dump={label}")
    return label


def _child(calls: int, dtype_name: str) -> None:
    import torch

    torch.set_num_threads(1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    rows = host_overhead.measure("cpu", calls, dtype, per_call=_counted, unit="label")
    print(json.dumps(rows))


def _dump_totals(prefix: str) -> dict:
    """{dump label: instructions} from callgrind's dump files ``prefix.N``."""
    totals = {}
    for path in glob.glob(prefix + ".*"):
        label, total = None, None
        with open(path) as f:
            for line in f:
                if line.startswith("desc: Trigger: dump "):  # callgrind_control --dump=LABEL
                    label = line[len("desc: Trigger: dump "):].strip()
                elif line.startswith("totals:"):
                    total = int(line.split()[1])
        if label is not None and total is not None:
            totals[label] = total
    return totals


def measure(calls: int, dtype_name: str) -> list:
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"host_instructions: {tool} not found (apt install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={prefix}",
               sys.executable, os.path.abspath(__file__), "--child", "--calls", str(calls), "--dtype", dtype_name]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"host_instructions: the child failed:\n{proc.stderr[-3000:]}")
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
        totals = _dump_totals(prefix)
    for row in rows:
        label = row.pop("label", None)
        if label is not None:
            row["instructions"] = totals[label] / calls
    return rows


def markdown(rows: list, env: dict) -> str:
    title = (f"Host cost per conv call in instructions (callgrind; CPU, {env['dtype']}, batch 1, 16→16 channels, "
             f"8×8, one thread; {env['calls']} counted calls per path)")
    return host_overhead.table(rows, title, env["versions"], "instructions", "instructions per call", ",.0f")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--dtype", default="fp32", choices=DTYPES)
    ap.add_argument("--markdown")
    ap.add_argument("--json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.calls, args.dtype)
        return 0
    from fastconv import _devices

    rows = measure(args.calls, args.dtype)
    env = {"dtype": args.dtype, "calls": args.calls, "versions": _devices.versions()}
    host_overhead.emit(markdown(rows, env), env, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
