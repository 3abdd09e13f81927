"""The five networks on the CPU: torch eager vs fastconv.convert (cpu backend) — time, peak memory,
and DenseNet-121's concat traffic avoided.

    python benchmarks/cpu_models_memory.py [--batch 1] [--size 224] [--repeats 5] [--threads 2]

Each (model, variant) runs in a fresh subprocess so the peak-memory figure is its own: the peak
resident set (VmHWM, reset through /proc/self/clear_refs) during one forward, minus the resident
set just before it, i.e. the activations and workspace the forward needs beyond the weights.
Times are medians of repeated calls in that subprocess after one warm-up; eager and fastconv run
one after the other per model. Linux only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODELS = ["alexnet", "vgg16", "googlenet", "resnet50", "densenet121"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _child(name: str, variant: str, batch: int, size: int, repeats: int, threads: int) -> dict:
    import torch
    import torchvision

    import fastconv

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **({"init_weights": True} if name == "googlenet" else {}))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    if variant == "fastconv":
        model = fastconv.convert(model, inplace=True)
    x = torch.randn(batch, 3, size, size)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up (folding, oneDNN primitive caches, thread pools)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter to the current RSS
        before = _status_kib("VmRSS")
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
        peak = _status_kib("VmHWM")
        for _ in range(repeats - 1):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"model": name, "variant": variant, "ms": 1e3 * times[len(times) // 2], "peak_extra_mib": (peak - before) / 1024}


def densenet121_concat_bytes(batch: int, size: int, dtype_bytes: int = 4) -> dict:
    """Bytes that torchvision's eager DenseNet-121 moves through torch.cat, and fastconv's instead.

    Eager: layer i of a block concatenates all c_i channels so far (read + write c_i·H·W), and
    the block concatenates its final C channels once more. fastconv: one copy of the block input
    into the block's buffer (read + write c_0·H·W); every layer then writes in place.
    """
    growth, blocks, c = 32, (6, 12, 24, 16), 64
    hw = (size // 4) ** 2
    eager = fast = 0
    for i, layers in enumerate(blocks):
        for j in range(layers):
            eager += 2 * (c + j * growth) * hw
        final = c + layers * growth
        eager += 2 * final * hw
        fast += 2 * c * hw
        c = final // 2
        hw //= 4 if i < len(blocks) - 1 else 1
    scale = batch * dtype_bytes
    return {"eager_concat_bytes": eager * scale, "fastconv_copy_bytes": fast * scale,
            "avoided_bytes": (eager - fast) * scale}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child, args.batch, args.size, args.repeats, args.threads)))
        return 0
    rows = []
    for name in args.models.split(","):
        result = {}
        for variant in ("eager", "fastconv"):
            cmd = [sys.executable, __file__, "--child", name, variant, "--batch", str(args.batch), "--size",
                   str(args.size), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            # glibc must return freed tensors to the OS for RSS to track live memory: a fixed mmap
            # threshold (setting it disables glibc's dynamic raise of it) puts every tensor over
            # 64 KiB in its own mapping, unmapped on free.
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            result[variant] = json.loads(out.strip().splitlines()[-1])
            print(f"  {name} {variant}: {result[variant]['ms']:.1f} ms", file=sys.stderr)
        rows.append(result)
    load = os.getloadavg()[0]
    print(f"CPU, {os.cpu_count()} cores, {args.threads} threads, batch {args.batch}, {args.size}x{args.size}, fp32 NCHW; "
          f"load average {load:.1f}\n")
    print("| model | eager ms | fastconv ms | speedup × | eager peak MiB | fastconv peak MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        e, f = r["eager"], r["fastconv"]
        print(f"| {e['model']} | {e['ms']:.1f} | {f['ms']:.1f} | {e['ms'] / f['ms']:.2f} | "
              f"{e['peak_extra_mib']:.1f} | {f['peak_extra_mib']:.1f} |")
    c = densenet121_concat_bytes(args.batch, args.size)
    print(f"\nDenseNet-121 concat traffic at batch {args.batch}, {args.size}x{args.size}, fp32: eager torch.cat moves "
          f"{c['eager_concat_bytes'] / 2**20:.1f} MiB, fastconv copies {c['fastconv_copy_bytes'] / 2**20:.1f} MiB "
          f"(block inputs); {c['avoided_bytes'] / 2**20:.1f} MiB avoided per forward.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
