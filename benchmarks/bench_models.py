"""The five networks end to end: torchvision eager against fastconv.convert() of the same
model (random weights, randomized BatchNorm statistics so folding matters).

Model-level knobs: FASTCONV_BENCH_MODEL_SIZE (default 224 on a GPU, 64 on the CPU) and
FASTCONV_BENCH_MODEL_BATCH (default 32 on a GPU, 1 on the CPU)."""
import functools
import os

import pytest
import torch

import fastconv
from fastconv import _bench, _summary

from . import _common as C

SIZE = int(os.environ.get("FASTCONV_BENCH_MODEL_SIZE") or (224 if C.DEVICE == "cuda" else 64))
BATCH = int(os.environ.get("FASTCONV_BENCH_MODEL_BATCH") or (32 if C.DEVICE == "cuda" else 1))


@functools.lru_cache(maxsize=1)  # the providers of one model run one after another
def _reference(name: str):
    gen = torch.Generator().manual_seed(0)
    model = _bench.randomize_batchnorm(_bench.torchvision_model(name), gen).eval().to(C.DEVICE)
    inputs = C.make_inputs(lambda g: (C.randn(BATCH, 3, SIZE, SIZE, gen=g),))
    with torch.inference_mode(), C.fp32_precision():
        ref = model(inputs[0][0].float())
    return model, inputs, ref


@pytest.mark.parametrize("provider", C.PROVIDERS)
@pytest.mark.parametrize("model_name", _bench.DEFAULT_MODELS)
def test_model(benchmark, model_name, provider):
    ctx = C.require(provider)
    model, inputs, ref = _reference(model_name)
    if provider == "torch":
        run_model = model if C.dtype() == torch.float32 else __import__("copy").deepcopy(model).to(C.dtype())
        if C.channels_last():
            run_model = run_model.to(memory_format=torch.channels_last)
    else:
        # (on the CPU convert()'s default layout policy, as `python -m fastconv bench` and users get it)
        run_model = fastconv.convert(model, dtype=C.dtype(), channels_last=True if C.channels_last() else None)
    macs = _summary.summarize(model_name, SIZE, BATCH).total_macs
    C.run(benchmark, ctx, run_model, inputs, ref, flops=2 * macs, warmup=2)
    benchmark.extra_info.update({"batch": BATCH, "size": SIZE})
