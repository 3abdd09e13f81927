"""What the pytest-benchmark suites share: the device, dtype and shapes in force, the providers
and why one is skipped, input rotation, and the extra_info every case records."""
from __future__ import annotations

import contextlib
import itertools
import os
from typing import Callable, List, Optional, Sequence

import pytest
import torch

import fastconv
from fastconv import _bench, _devices

from . import shapes as S
from ._ops import N_INPUTS, rel_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROVIDERS = ("fastconv-triton", "fastconv-cuda", "fastconv-cpu", "torch")


def _env_choice(name: str, default: str, choices) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _env_positive_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return n


def dtype_name() -> str:
    return _env_choice("FASTCONV_BENCH_DTYPE", "bf16" if DEVICE == "cuda" else "fp32", list(_devices.DTYPES))


# A case fails when its result is further from the fp32 oracle than this: the bound the command
# line's bench uses (far above rounding, far below a wrong kernel's error of ~1)
ERROR_BOUND = _bench.ERROR_BOUND


def dtype() -> torch.dtype:
    return _devices.DTYPES[dtype_name()]


def channels_last() -> bool:
    return DEVICE == "cuda"


def batch() -> int:
    return _env_positive_int("FASTCONV_BENCH_BATCH", 32 if DEVICE == "cuda" else 2)


def shapes(kind: str) -> list:
    """The shape list ``kind`` (e.g. "CONV_SHAPES") as the environment asks for it."""
    items = getattr(S, kind)
    mode = _env_choice("FASTCONV_BENCH_SHAPES", "all" if DEVICE == "cuda" else "sample", ("all", "sample"))
    if mode == "sample":
        items = S.sample(items)
    if DEVICE == "cpu" and os.environ.get("FASTCONV_BENCH_FULL_SIZE") != "1":
        items = [S.scale_down(s) for s in items]
    return items


def skip_reason(provider: str) -> Optional[str]:
    """None when ``provider`` can be timed here, else why not."""
    if provider == "torch":
        return None
    backend = provider.split("-", 1)[1]
    if backend in ("triton", "cuda") and DEVICE != "cuda":
        return f"{provider}: no CUDA device" + (" (interpreted Triton is a correctness tool, not timed)"
                                                 if backend == "triton" else "")
    if backend == "cpu" and DEVICE != "cpu":
        return f"{provider}: the benchmarks run on the GPU here"
    status = fastconv.backend_status()[backend]
    return None if status == "available" else f"{provider}: {status}"


def require(provider: str) -> contextlib.AbstractContextManager:
    """Skip the case if ``provider`` can't run; else the context to run its calls in."""
    reason = skip_reason(provider)
    if reason:
        pytest.skip(reason)
    if provider == "torch":
        return contextlib.nullcontext()
    return fastconv.use_backend(provider.split("-", 1)[1])


def randn(*shape, gen: torch.Generator, scale: float = 1.0, layout: bool = True) -> torch.Tensor:
    t = (torch.randn(*shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype())
    if layout and channels_last() and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


@contextlib.contextmanager
def fp32_precision():
    """Reference results in true fp32 (no TF32) on the GPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def run(benchmark, ctx, fn: Callable, inputs: Sequence, torch_result: torch.Tensor, *, flops: float = 0.0,
        moved: float = 0.0, warmup: int = 3) -> None:
    """Warm up (Triton autotuning, cuDNN benchmark mode), check against ``torch_result`` (the
    reference op computed in fp32), then time ``fn`` over the cycled ``inputs`` and record
    extra_info. GPU calls synchronize, so the time is that of the finished kernels."""
    torch.backends.cudnn.benchmark = True
    with torch.inference_mode(), ctx:
        y = fn(*inputs[0])
        for i in range(warmup):
            fn(*inputs[i % len(inputs)])
        _sync()
        cycle = itertools.cycle(inputs)

        def step():
            fn(*next(cycle))
            _sync()

        benchmark(step)
    info = benchmark.extra_info
    info["device"] = _devices.device_name(torch.device(DEVICE))
    info.update({f"version_{k}": v for k, v in _devices.versions().items()})
    info["dtype"] = dtype_name()
    info["channels_last"] = channels_last()
    err = info["rel_err_vs_torch_fp32"] = rel_error(y, torch_result)
    bound = ERROR_BOUND.get(dtype_name(), 1e-2)
    assert err <= bound, f"relative error {err:.2e} against the fp32 oracle is above {bound:.0e} ({dtype_name()})"
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    seconds = stats.median
    spec = _devices.current_gpu_spec()
    if flops:
        info["TFLOP/s"] = flops / seconds / 1e12
        if spec:  # fp32 convs run on TF32 tensor cores when cuDNN allows it, as PyTorch does by default
            tf32 = dtype_name() == "fp32" and torch.backends.cudnn.allow_tf32
            info["fraction_of_peak_flops"] = flops / seconds / spec.peak["tf32" if tf32 else dtype_name()]
    if moved:
        info["GB/s"] = moved / seconds / 1e9
        if spec:
            info["fraction_of_peak_bandwidth"] = moved / seconds / spec.bandwidth


def make_inputs(make: Callable[[torch.Generator], tuple], seed: int = 0) -> List[tuple]:
    gen = torch.Generator().manual_seed(seed)
    return [make(gen) for _ in range(N_INPUTS)]
