"""``python -m fastconv bench``: PyTorch eager against ``fastconv.convert()`` of the same model.

For each model and batch size: a torchvision model with random weights and randomized
BatchNorm statistics (so folding matters), ``eval()`` under ``torch.inference_mode()``
(cuDNN with ``cudnn.benchmark=True`` on a GPU), and its conversion. Numerics: relative error
‖y − ref‖/‖ref‖ and top-1 agreement against the model in fp32 (no TF32) on the same random
inputs. Timing: medians after warm-up, CUDA events on a GPU, several preallocated inputs
cycled so no call finds its input in cache, eager and fastconv (and torch.compile) interleaved
call by call in one process.

On a GPU the defaults are bf16 channels_last at batch 1, 32, 256; on the CPU fp32 NCHW at
batch 1 with few repetitions, so the default run finishes in a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from . import _devices
from ._table import render_table

DEFAULT_MODELS = ("alexnet", "vgg16", "googlenet", "resnet50", "densenet121")
N_INPUTS = 3  # inputs cycled through the timed calls


@dataclass
class BenchConfig:
    models: Sequence[str] = DEFAULT_MODELS
    batches: Sequence[int] = (1,)
    dtype: str = "fp32"
    channels_last: bool = False
    backend: Optional[str] = None
    compile_batches: Sequence[int] = ()      # batch sizes that get a torch.compile column
    size: int = 224
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    seed: int = 0


@dataclass
class Progress:
    """One self-overwriting stderr line on a terminal, one line per step otherwise."""
    total: int
    done: int = 0
    t0: float = field(default_factory=time.perf_counter)
    stream: object = field(default_factory=lambda: sys.stderr)  # (the stderr of now, not of the import)

    def step(self, what: str) -> None:
        msg = f"[{self.done}/{self.total}, {time.perf_counter() - self.t0:.0f} s] {what}"
        if getattr(self.stream, "isatty", lambda: False)():
            self.stream.write("\r\033[K" + msg)
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        if getattr(self.stream, "isatty", lambda: False)():
            self.stream.write("\r\033[K")
            self.stream.flush()


def defaults_for(device: str) -> dict:
    if device == "cuda":
        return {"batches": (1, 32, 256), "dtype": "bf16", "channels_last": True, "repeats": 50, "warmup": 10}
    return {"batches": (1,), "dtype": "fp32", "channels_last": False, "repeats": 5, "warmup": 1}


def torchvision_model(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError as exc:
        raise SystemExit("python -m fastconv bench times fastconv against torchvision's models: "
                         "pip install torchvision") from exc

    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(**kwargs)


def randomize_batchnorm(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Random but well-conditioned BN statistics and affine parameters, so that folding them
    into the convs changes the weights substantially (fresh BNs are an identity map)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: Dict[str, Callable], inputs: Sequence[torch.Tensor], repeats: int, warmup: int,
                     device: str) -> Dict[str, List[float]]:
    """Milliseconds per call of each fn, measured call by call in turns (the order rotates each
    round so none always runs right after another), inputs cycled. CUDA events on a GPU."""
    names = list(fns)
    for i in range(warmup):
        for name in names:
            fns[name](inputs[i % len(inputs)])
    _sync(device)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for k, name in enumerate(order):
            x = inputs[(r + k) % len(inputs)]
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fns[name](x)
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fns[name](x)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def _logits(y) -> torch.Tensor:
    return y.logits if hasattr(y, "logits") else y


# A result further than this from the fp32 eager reference (relative L2 error of the logits) is
# wrong, not rounded: the run reports it and exits 1. Far above rounding (fp32 convs may run as
# TF32 on a GPU, as cuDNN's do; bf16 through a deep network), far below a wrong kernel's ~1.
ERROR_BOUND = {"fp32": 1e-2, "tf32": 1e-2, "fp16": 2e-2, "bf16": 5e-2, "fp64": 1e-6}


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    return ((y - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def top1_agreement(y: torch.Tensor, ref: torch.Tensor) -> float:
    return (y.argmax(-1) == ref.argmax(-1)).double().mean().item()


def _resolved_backend(cfg: BenchConfig) -> str:
    import fastconv
    from fastconv import _backend

    if (cfg.backend or "auto") == "auto":
        from fastconv import _autotune

        cands = _autotune.candidates("conv2d_relu", torch.device(cfg.device))
        return "per-signature tactics timed among " + "/".join(cands)
    with fastconv.use_backend(cfg.backend or "auto"):
        try:
            return _backend.resolve(torch.device(cfg.device), "bench")
        except RuntimeError as exc:
            raise SystemExit(f"bench: {exc}")


@dataclass
class Prepared:
    """One model ready to measure: the fp32 reference, the eager model and the converted one."""
    name: str
    ref_model: nn.Module
    eager: nn.Module
    fast: nn.Module
    gen: torch.Generator
    compiled: Optional[Callable] = None


def prepare(name: str, cfg: BenchConfig) -> Prepared:
    import fastconv

    dtype = _devices.DTYPES[cfg.dtype]
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ref_model = randomize_batchnorm(torchvision_model(name), gen).eval()
    # NCHW inputs on the CPU: convert's default layout policy (channels_last inside), what a user gets
    layout = True if cfg.channels_last else (None if str(cfg.device).startswith("cpu") else False)
    fast = fastconv.convert(ref_model, dtype=None if dtype == torch.float32 else dtype,
                            channels_last=layout).to(cfg.device)
    ref_model = ref_model.to(cfg.device)
    eager = ref_model if dtype == torch.float32 else copy.deepcopy(ref_model).to(dtype)
    if cfg.channels_last:
        eager = eager.to(memory_format=torch.channels_last)
    return Prepared(name, ref_model, eager, fast, gen)


def measure(p: Prepared, batch: int, cfg: BenchConfig, with_compile: bool = False,
            step: Callable[[str], None] = lambda what: None) -> dict:
    """One row: numerics and interleaved timings of eager, fastconv (and torch.compile) at ``batch``."""
    import fastconv

    dtype = _devices.DTYPES[cfg.dtype]
    backend = cfg.backend or "auto"
    inputs = [torch.randn(batch, 3, cfg.size, cfg.size, generator=p.gen).to(cfg.device) for _ in range(N_INPUTS)]
    with torch.inference_mode(), fastconv.use_backend(backend):
        step(f"batch {batch}: fp32 reference")
        with _precision("fp32"):
            refs = [_logits(p.ref_model(x)).float() for x in inputs]
        inputs = [x.to(dtype) for x in inputs]
        if cfg.channels_last:
            inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
        with _precision(cfg.dtype):
            fns = {"eager": p.eager, "fastconv": p.fast}
            if with_compile:
                step(f"batch {batch}: torch.compile")
                if p.compiled is None:
                    p.compiled = torch.compile(p.fast)
                fns["compile"] = p.compiled
            outs = {}
            for key, fn in fns.items():
                step(f"batch {batch}: numerics ({key})")
                outs[key] = [_logits(fn(x)).float() for x in inputs]  # under auto: tunes every signature
            with fastconv.kernel_stats() as stats:  # which kernels ran the conv FLOPs (tactics now cached)
                p.fast(inputs[0])
            step(f"batch {batch}: timing {', '.join(fns)} × {cfg.repeats}")
            times = time_interleaved(fns, inputs, cfg.repeats, cfg.warmup, cfg.device)
    ref = torch.cat(refs)
    row = {"model": p.name, "batch": batch, "dtype": cfg.dtype, "size": cfg.size,
           "channels_last": cfg.channels_last, "backend": backend}
    for key in fns:
        y = torch.cat(outs[key])
        row[f"{key}_ms"] = statistics.median(times[key])
        row[f"{key}_ms_all"] = [round(t, 4) for t in times[key]]
        row[f"{key}_rel_err"] = rel_error(y, ref)
        row[f"{key}_top1_agree"] = top1_agreement(y, ref)
    row["speedup"] = row["eager_ms"] / row["fastconv_ms"]
    row["own_flops_frac"] = stats.own_fraction()  # conv FLOPs on fastconv's kernels (the rest: PyTorch's)
    row["tactics"] = {f"{op}:{t}": n for (op, t), n in sorted(stats.calls.items())}
    row["torch_copied_mb"] = stats.copied_bytes / 1e6
    if "compile" in fns:
        row["compile_speedup"] = row["eager_ms"] / row["compile_ms"]
    return row


def bench_model(name: str, cfg: BenchConfig, progress: Optional[Progress] = None) -> List[dict]:
    """All of cfg.batches for one model: one result dict per batch size."""
    def step(what):
        if progress:
            progress.step(f"{name}: {what}")

    step("building")
    p = prepare(name, cfg)
    results = []
    for batch in cfg.batches:
        results.append(measure(p, batch, cfg, batch in cfg.compile_batches, step))
        if progress:
            progress.advance()
    return results


class _precision:
    """fp32 means fp32 (no TF32) on the GPU, tf32 allows it; restored afterwards."""

    def __init__(self, dtype: str) -> None:
        self.allow = dtype != "fp32"

    def __enter__(self):
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.allow

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def run(cfg: BenchConfig, on_result: Optional[Callable[[dict], None]] = None, progress: Optional[Progress] = None,
        ) -> List[dict]:
    saved_benchmark = torch.backends.cudnn.benchmark
    if cfg.device == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        return _run(cfg, on_result, progress)
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark  # (the caller's process keeps its setting)


def _run(cfg: BenchConfig, on_result, progress) -> List[dict]:
    results = []
    for name in cfg.models:
        try:
            rows = bench_model(name, cfg, progress)
        except Exception as exc:  # report it and go on: one model's failure must not hide the others
            rows = [{"model": name, "error": f"{type(exc).__name__}: {exc}"}]
        for row in rows:
            results.append(row)
            if on_result:
                on_result(row)
        if cfg.device == "cuda":
            torch.cuda.empty_cache()
    return results


def table_rows(results: Sequence[dict]):
    has_compile = any("compile_ms" in r for r in results)
    headers = ["model", "batch", "dtype", "eager ms", "fastconv ms", "speedup ×"]
    if has_compile:
        headers += ["compile ms", "compile ×", "compile error"]
    headers += ["rel. error", "top-1 agree"]
    has_own = any("own_flops_frac" in r for r in results)
    if has_own:
        headers += ["own-kernel conv FLOPs"]
    rows = []
    for r in results:
        if "error" in r:
            continue
        row = [r["model"], r["batch"], r["dtype"] + (" CL" if r.get("channels_last") else ""),
               f"{r['eager_ms']:.2f}", f"{r['fastconv_ms']:.2f}", f"{r['speedup']:.2f}"]
        if has_compile:
            row += ([f"{r['compile_ms']:.2f}", f"{r['compile_speedup']:.2f}", f"{r['compile_rel_err']:.1e}"]
                    if "compile_ms" in r else ["", "", ""])
        row += [f"{r['fastconv_rel_err']:.1e}", f"{100 * r['fastconv_top1_agree']:.0f}%"]
        if has_own:  # conv FLOPs on fastconv's own kernels; the rest ran on PyTorch's (the torch tactic)
            own = r.get("own_flops_frac")
            row += ["" if own is None else f"{100 * own:.0f}%"]
        rows.append(row)
    return headers, rows


def header_lines(cfg: BenchConfig) -> List[str]:
    v = _devices.versions()
    return [f"device: {_devices.device_name(torch.device(cfg.device))}",
            "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"fastconv backend: {cfg.backend or 'auto'} (resolves to {_resolved_backend(cfg)} here); "
            f"{cfg.dtype}{' channels_last' if cfg.channels_last else ' NCHW'}, {cfg.size}×{cfg.size}, "
            f"median of {cfg.repeats} after {cfg.warmup} warm-up, {N_INPUTS} inputs cycled; "
            f"error and top-1 against the model in fp32"
            + (f"; load average {_loadavg():.1f}" if cfg.device == "cpu" and _loadavg() is not None else "")]


def report(cfg: BenchConfig, results: Sequence[dict]) -> dict:
    return {"device": cfg.device, "device_name": _devices.device_name(torch.device(cfg.device)),
            "versions": _devices.versions(), "threads": torch.get_num_threads(), "load_average": _loadavg(),
            "config": asdict(cfg), "results": list(results)}


def _loadavg():
    """The 1-minute load average: a benchmark taken on a busy machine should say so."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def plot(results: Sequence[dict], path: str, title: str = "") -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench --plot needs matplotlib: pip install matplotlib (or fastconv[plot])")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\nbs {r['batch']}" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(results)), 4))
    xs = range(len(results))
    ax.bar([x - 0.2 for x in xs], [r["speedup"] for r in results], 0.4, label="fastconv")
    if any("compile_speedup" in r for r in results):
        ax.bar([x + 0.2 for x in xs], [r.get("compile_speedup", 0) for r in results], 0.4,
               label="torch.compile(fastconv)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("speedup over eager ×")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _at_least(minimum: int):
    """An argparse type: an int of at least ``minimum`` (a batch of 0, zero repeats or zero
    threads would measure nothing; argparse reports the message as a bad argument)."""
    def parse(s: str) -> int:
        try:
            value = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {s!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive = _at_least(1)


def _int_list(s: str) -> List[int]:
    values = [_positive(v) for v in s.split(",") if v]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {s!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ._summary import MODELS

    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated (default: {','.join(DEFAULT_MODELS)}); any of: {', '.join(MODELS)}")
    p.add_argument("--batch", type=_int_list, default=None, help="comma-separated batch sizes "
                   "(GPU default 1,32,256; CPU default 1)")
    p.add_argument("--dtype", choices=["fp32", "tf32", "fp16", "bf16"], default=None,
                   help="GPU default bf16 (channels_last); CPU default fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for GPU, off for CPU")
    p.add_argument("--backend", choices=["auto", "triton", "cuda", "cpu", "torch", "reference"], default=None,
                   help="force one fastconv backend (fastconv.use_backend); cpu/cuda/triton show fastconv's "
                        "own kernels alone, auto may pick PyTorch's kernel per layer (see 'own-kernel conv FLOPs')")
    p.add_argument("--compile", action="store_true", help="add a torch.compile(converted model) column")
    p.add_argument("--size", type=_positive, default=224, help="image size (default 224)")
    p.add_argument("--repeats", type=_positive, default=None, help="timed calls per variant (GPU 50, CPU 5)")
    p.add_argument("--warmup", type=_at_least(0), default=None, help="warm-up calls per variant (GPU 10, CPU 1)")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when present")
    p.add_argument("--threads", type=_positive, default=None,
                   help="CPU threads (torch.set_num_threads); on a loaded machine 1 avoids OpenMP threads "
                        "waiting on each other at every op, which slows eager's many small ops most")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", default=None, metavar="FILE", help="PNG bar chart of the speedups (needs matplotlib)")


def config_from_args(args) -> BenchConfig:
    from ._summary import MODELS

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but no CUDA device is visible")
    d = defaults_for(device)
    models = [m for m in args.models.split(",") if m]
    if not models:
        raise SystemExit(f"bench: --models names no model; choose from {', '.join(MODELS)}")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"bench: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.size < 224:  # (every model runs at 224 and above) a clear message now, not PyTorch's mid-run
        from ._summary import InputSizeError, summarize
        for m in models:
            try:
                summarize(m, args.size, 1)
            except InputSizeError as exc:
                raise SystemExit(f"bench --size: {exc}") from None
    batches = tuple(args.batch or d["batches"])
    return BenchConfig(models=tuple(models), batches=batches, dtype=args.dtype or d["dtype"],
                       channels_last=d["channels_last"] if args.channels_last is None else args.channels_last,
                       backend=args.backend, compile_batches=batches if args.compile else (), size=args.size,
                       repeats=d["repeats"] if args.repeats is None else args.repeats,
                       warmup=d["warmup"] if args.warmup is None else args.warmup, device=device)


def main(args) -> int:
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)  # (main() may be called in-process: leave the thread count as found)


def _main(args) -> int:
    cfg = config_from_args(args)
    if cfg.dtype in ("fp16", "bf16") and cfg.device == "cpu":
        print(f"note: {cfg.dtype} on the CPU: fastconv's own CPU kernels compute in fp32 and round once; the "
              f"torch tactic (oneDNN, where auto picks it) computes in {cfg.dtype} itself where oneDNN has such a kernel",
              file=sys.stderr)
    for option, path in (("--json", args.json), ("--plot", args.plot)):  # fail before the run, not after it
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if path and (not os.path.isdir(folder) or not os.access(folder, os.W_OK) or os.path.isdir(path)):
            raise SystemExit(f"bench {option}: cannot write {path!r} (no such folder, or not writable)")
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (fail before the run, not after it)
        except ImportError:
            raise SystemExit("bench --plot needs matplotlib: pip install matplotlib (or fastconv[plot])")
    load = _loadavg()
    if cfg.device == "cpu" and load is not None and load > (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        print(f"note: load average {load:.1f} on {os.cpu_count()} CPUs: {torch.get_num_threads()} OpenMP threads "
              "wait on each other at every op on a busy machine, which slows eager most; --threads 1 measures "
              "more steadily", file=sys.stderr)
    head = header_lines(cfg)
    print("\n".join(head), flush=True)
    progress = Progress(total=len(cfg.models) * len(cfg.batches))
    t0 = time.perf_counter()
    try:
        results = run(cfg, progress=progress)
    finally:
        progress.close()
    headers, rows = table_rows(results)
    print(render_table(headers, rows))
    errors = [r for r in results if "error" in r]
    for r in errors:
        print(f"{r['model']}: FAILED: {r['error']}")
    bound = ERROR_BOUND.get(cfg.dtype, 1e-2)
    for r in results:
        for key in ("fastconv", "compile"):
            err = r.get(f"{key}_rel_err")
            if err is not None and not err <= bound:  # (NaN fails too)
                errors.append(r)
                print(f"{r['model']} batch {r['batch']}: FAILED: {key}'s relative error {err:.1e} against eager "
                      f"fp32 is above {bound:.0e} for {cfg.dtype}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report(cfg, results), f, indent=1)
    if args.plot:
        plot([r for r in results if "error" not in r], args.plot, head[0])
    return 1 if errors else 0
