"""Probe oneDNN's CPU conv (``mkldnn::_convolution_pointwise``, bfloat16 or float32) on random small
convs, raw or through the ``torch`` tactic's rewrite (``_steer_onednn``), against the float64 conv of
the same rounded inputs. Re-run it when moving to a new torch release: it is how the bugs the tactic
steers around were found (benchmarks/RESULTS.md, "The torch tactic in bfloat16").

Each case runs in a child process that prints it first, so a segfault is recorded against its case
and the probe goes on from the next one.

    python benchmarks/onednn_conv_probe.py [--calls 8000] [--seed 2] [--big] [--steered] [--dtype float32] [--jsonl FILE]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_case(seed: int, i: int, big: bool) -> dict:
    rnd = random.Random(seed * 1000003 + i)
    if big:  # channel counts oneDNN's AMX/AVX512 kernels block by
        g = rnd.choice([1, 1, 1, 2, 4])
        cin, cout = g * rnd.choice([3, 16, 24, 32, 64, 128]), g * rnd.choice([5, 8, 16, 32, 64])
    else:
        g = rnd.choice([1, 1, 2, 4])
        cin, cout = g * rnd.choice([2, 3, 4, 8, 16]), g * rnd.choice([1, 2, 4, 16])
    kh, kw = rnd.randint(1, 4), rnd.randint(1, 4)
    sh, sw = rnd.randint(1, 3), rnd.randint(1, 3)
    dh, dw = rnd.randint(1, 2), rnd.randint(1, 2)
    ph, pw = rnd.randint(0, 2), rnd.randint(0, 2)
    dh, dw = (dh if kh > 1 else 1), (dw if kw > 1 else 1)  # a 1-tap dilation: a separate crash (tactic guards it)
    top = 20 if big else 12
    h = rnd.randint(max(1, dh * (kh - 1) + 1 - 2 * ph), top)
    w = rnd.randint(max(1, dw * (kw - 1) + 1 - 2 * pw), top)
    return dict(n=rnd.randint(1, 2), cin=cin, cout=cout, h=h, w=w, k=[kh, kw], s=[sh, sw], p=[ph, pw], d=[dh, dw],
                g=g, channels_last=rnd.random() < 0.5, prepacked=rnd.random() < 0.5)


def run_cases(seed: int, start: int, stop: int, big: bool, steered: bool, dtype_name: str) -> None:
    """Child: print each case, run it, print its relative error."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, ROOT)
    from fastconv.ops._torch_tactic import _steer_onednn

    dtype = getattr(torch, dtype_name)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5

    for i in range(start, stop):
        c = make_case(seed, i, big)
        print("CASE", i, json.dumps(c), flush=True)
        gen = torch.Generator().manual_seed(i)
        x = torch.randn(c["n"], c["cin"], c["h"], c["w"], generator=gen).to(dtype)
        wt = torch.randn(c["cout"], c["cin"] // c["g"], *c["k"], generator=gen).to(dtype)
        if c["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        ref = F.conv2d(x.double(), wt.double(), None, c["s"], c["p"], c["d"], c["g"])
        pad, stride = c["p"], c["s"]
        if steered:
            x, pad4, stride = _steer_onednn(x, wt, [pad[0], pad[0], pad[1], pad[1]], list(stride), c["d"])
            pad = [pad4[0], pad4[2]]  # symmetric: _steer_onednn pads explicitly or leaves the padding as given
        w_in = (torch.ops.mkldnn._reorder_convolution_weight(wt, pad, stride, c["d"], c["g"], list(x.shape))
                if c["prepacked"] else wt)
        y = torch.ops.mkldnn._convolution_pointwise(x, w_in, None, pad, stride, c["d"], c["g"], "none", [], "")
        err = ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        print("OK" if err <= tol else "WRONG", i, err, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--big", action="store_true", help="AMX-sized channel counts (3 to 512) and up to 20x20 inputs")
    ap.add_argument("--steered", action="store_true", help="through the tactic's rewrite (_steer_onednn)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--jsonl", default=None, help="write every case and its outcome here")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        run_cases(args.seed, args.child, args.calls, args.big, args.steered, args.dtype)
        return 0
    import torch

    results, i = [], 0
    while i < args.calls:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(i), "--calls", str(args.calls),
               "--seed", str(args.seed), "--dtype", args.dtype] + (["--big"] if args.big else []) + \
            (["--steered"] if args.steered else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        running = None  # (index, case) printed but not finished: the one a crash belongs to
        for line in proc.stdout.splitlines():
            word, index, rest = line.split(" ", 2)
            if word == "CASE":
                running = (int(index), json.loads(rest))
            else:
                results.append(dict(i=running[0], case=running[1], outcome=word, err=float(rest)))
                running = None
        if proc.returncode == 0:
            break
        if running is None:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        results.append(dict(i=running[0], case=running[1], outcome=f"CRASH (rc {proc.returncode})"))
        i = running[0] + 1
    if args.jsonl:
        with open(args.jsonl, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    counts = collections.Counter(r["outcome"].split(" ")[0] for r in results)
    print(f"torch {torch.__version__}, {args.dtype}, {'steered' if args.steered else 'raw'}, {'big' if args.big else 'small'} "
          f"convs, seed {args.seed}: {len(results)} calls, {counts.get('WRONG', 0)} wrong, "
          f"{counts.get('CRASH', 0)} crashed")
    for r in [r for r in results if r["outcome"] != "OK"][:10]:
        print(f"  {r['outcome']}: {r['case']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
