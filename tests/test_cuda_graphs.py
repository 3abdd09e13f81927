"""CUDA-graph capture of converted models (convert(..., cuda_graph=True)); needs a CUDA device."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fastconv
from fastconv import _autotune


def _model():
    torch.manual_seed(0)
    import torchvision

    m = torchvision.models.resnet18().eval()
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_graph_replay_matches_eager_converted(dtype, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    fastconv.clear_cache()
    model = _model().to("cuda", dtype)
    x = torch.randn(1, 3, 64, 64, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    fast = fastconv.convert(model, channels_last=True)
    graphed = fastconv.convert(model, channels_last=True, example_input=x, cuda_graph=True)
    assert isinstance(graphed, fastconv.CUDAGraphModel)
    tol = 2e-2 if dtype == torch.float16 else 5e-3
    with torch.inference_mode():
        for seed in range(3):
            xi = torch.randn(x.shape, device="cuda", dtype=dtype, generator=torch.Generator("cuda").manual_seed(seed))
            xi = xi.contiguous(memory_format=torch.channels_last)
            y = graphed(xi)
            assert y.data_ptr() == graphed.static_output.data_ptr()  # the static buffer, overwritten next call
            torch.testing.assert_close(y.float(), fast(xi).float(), rtol=tol, atol=tol)
        # replay never tunes: every signature was tuned before capture
        with _autotune.use_timer(lambda *a: pytest.fail("timed during replay")):
            graphed(x)
        # another shape runs the eager converted forward
        x2 = torch.randn(2, 3, 64, 64, device="cuda", dtype=dtype)
        torch.testing.assert_close(graphed(x2).float(), fast(x2).float(), rtol=tol, atol=tol)
    strict = fastconv.CUDAGraphModel(fast, x, fallback="raise", progress=False)
    with torch.inference_mode(), pytest.raises(ValueError, match="captured for input"):
        strict(torch.randn(2, 3, 64, 64, device="cuda", dtype=dtype))


@pytest.mark.gpu
def test_graph_needs_a_cuda_example():
    fast = fastconv.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval())
    with pytest.raises(RuntimeError, match="example_input must be a CUDA tensor"):
        fastconv.CUDAGraphModel(fast, torch.randn(1, 3, 8, 8))


@pytest.mark.gpu
def test_graph_tuned_by_gpu_time_matches_and_keeps_its_own_choices(tmp_path, monkeypatch):
    """convert(..., cuda_graph=True, graph_tune_by="gpu"): tactics timed by GPU time alone (each
    candidate captured and replayed), stored under their own device key; replay matches the
    eager converted forward, and eager calls do not see the GPU-timed choices."""
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    fastconv.clear_cache()
    model = _model().to("cuda", torch.float16)
    x = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    graphed = fastconv.convert(model, channels_last=True, example_input=x, cuda_graph=True, graph_tune_by="gpu")
    assert graphed.tune_by == "gpu"
    gpu_keys = {dk for (dk, _) in _autotune.CACHE._memory if dk.endswith("| timing gpu")}
    assert gpu_keys, "no choice was stored under the GPU-timing key"
    assert not any(not dk.endswith("| timing gpu") for (dk, _) in _autotune.CACHE._memory)
    fast = fastconv.convert(model, channels_last=True)
    with torch.inference_mode():
        for seed in range(2):
            xi = torch.randn(x.shape, device="cuda", dtype=x.dtype, generator=torch.Generator("cuda").manual_seed(seed))
            xi = xi.contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(graphed(xi).float(), fast(xi).float(), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_gpu_time_timer_measures_a_kernel():
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)
    out = torch.empty_like(a)
    t = _autotune.gpu_time_timer("torch", lambda: torch.mm(a, a, out=out), torch.device("cuda"))
    assert 1e-6 < t < 1e-2  # a 2048^3 fp16 GEMM: microseconds, not the host's milliseconds
