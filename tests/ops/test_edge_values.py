"""Operands at the edges, on every backend that runs here: per-channel vectors that are strided
views, NaN through the fused ReLUs, and convolutions over zero input channels."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv

from ..utils import assert_close_rel, poisoned_like

BACKENDS = [b for b in ("cpu", "torch", "reference", "triton") if b in fastconv.available_backends()]
# on a GPU (tests/conftest.py skips @gpu elsewhere): the same checks on CUDA tensors
ON_DEVICES = [("cpu", b) for b in BACKENDS] + [pytest.param("cuda", b, marks=pytest.mark.gpu)
                                                 for b in ("cuda", "triton", "torch")]


def _on(device, *tensors):
    return [t.to(device) for t in tensors]


def _strided(values: torch.Tensor) -> torch.Tensor:
    """``values`` as every other element of a larger buffer (stride 2), the rest poison."""
    buf = torch.full((2 * values.numel(),), float("nan"), dtype=values.dtype)
    view = buf[::2]
    view.copy_(values)
    return view


@pytest.mark.parametrize("device,backend", ON_DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_strided_bias_scale_shift(device, backend, layout):
    """A bias (or prologue vector) sliced from a shared buffer: the torch tactic's oneDNN op read
    it densely, and so did the Triton 1×1 kernel (both silently wrong)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 16, 6, 6, generator=g)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    w3, w1 = torch.randn(16, 16, 3, 3, generator=g) / 12, torch.randn(16, 16, 1, 1, generator=g) / 4
    b, scale, shift = torch.randn(16, generator=g), torch.rand(16, generator=g) + 0.5, torch.randn(16, generator=g)
    sb, sscale, sshift = _strided(b), _strided(scale), _strided(shift)
    tol = 2e-3 if device == "cuda" else None  # (tf32 on a GPU, as cuDNN)
    x3, xw3, xw1, xsb, xsscale, xsshift = _on(device, x, w3, w1, sb, sscale, sshift)
    ref3 = F.relu(F.conv2d(x.double(), w3.double(), b.double(), padding=1))
    pre = F.relu(x.double() * scale.double()[:, None, None] + shift.double()[:, None, None])
    ref1 = F.relu(F.conv2d(pre, w1.double(), b.double()))
    with fastconv.use_backend(backend):
        for _ in range(2):  # the second call replays the planned kernel
            y3 = fastconv.conv2d_relu(x3, xw3, xsb, padding=1)
            y1 = fastconv.conv1x1(x3, xw1, xsb, in_scale=xsscale, in_shift=xsshift, in_relu=True)
            assert_close_rel(y3, ref3, torch.float32, f"{backend} conv2d_relu", tol=tol)
            assert_close_rel(y1, ref1, torch.float32, f"{backend} conv1x1", tol=tol)


@pytest.mark.parametrize("device,backend", ON_DEVICES)
def test_relu_propagates_nan(device, backend):
    """fastconv's ReLU is torch.relu's: NaN stays NaN (Triton's tl.maximum made it 0)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 6, 6, generator=g)
    x[0, 3, 2, 4] = float("nan")
    w3, w1 = torch.randn(16, 16, 3, 3, generator=g), torch.randn(16, 16, 1, 1, generator=g)
    x, w3, w1 = _on(device, x, w3, w1)
    shift = torch.zeros(16, device=device)
    with fastconv.use_backend(backend):
        cases = [
            (fastconv.conv2d_relu(x, w3, padding=1), F.relu(F.conv2d(x, w3, padding=1))),
            (fastconv.conv1x1(x, w1), F.relu(F.conv2d(x, w1))),
            (fastconv.conv1x1(x, w1, in_shift=shift, in_relu=True, relu=False), F.conv2d(F.relu(x), w1)),
        ]
    for got, want in cases:
        assert want.isnan().any()
        assert torch.equal(got.isnan(), want.isnan())
        finite = ~want.isnan()
        tol = 1e-2 if device == "cuda" else 1e-4  # (tf32 on a GPU)
        torch.testing.assert_close(got[finite], want[finite], rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_out", [False, True])
def test_zero_input_channels(backend, with_out):
    """A conv over no input channels is relu(bias + residual) in the op's shape on every backend
    (the torch tactic returned no channels and resized a caller's out= view; auto then raised a
    raw internal error)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 0, 5, 5, generator=g)
    w3, w1 = torch.randn(6, 0, 3, 3, generator=g), torch.randn(6, 0, 1, 1, generator=g)
    b = torch.randn(6, generator=g)
    res = torch.randn(2, 6, 5, 5, generator=g)
    want3 = F.relu(b.view(1, -1, 1, 1).expand(2, 6, 3, 3))
    want1 = F.relu(b.view(1, -1, 1, 1) + res)
    with fastconv.use_backend(backend):
        for _ in range(2):
            if with_out:
                buf3, buf1 = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 5, 5)
                keep3, keep1 = buf3.clone(), buf1.clone()
                y3 = fastconv.conv2d_relu(x, w3, b, out=buf3[:, 1:7])
                y1 = fastconv.conv1x1(x, w1, b, residual=res, out=buf1[:, 1:7])
                for buf, keep in ((buf3, keep3), (buf1, keep1)):
                    assert torch.equal(buf[:, [0, 7]], keep[:, [0, 7]])
            else:
                y3 = fastconv.conv2d_relu(x, w3, b)
                y1 = fastconv.conv1x1(x, w1, b, residual=res)
            assert torch.equal(y3, want3)
            assert torch.equal(y1, want1)
        outs = fastconv.ops.conv1x1_multi(x, [w1[:2], w1[2:]], b, relu=False,
                                          outs=[poisoned_like(torch.empty(2, 2, 5, 5)), None])
    assert torch.equal(torch.cat(outs, 1), b.view(1, -1, 1, 1).expand(2, 6, 5, 5))


def test_zero_input_channels_backward():
    x = torch.randn(2, 0, 5, 5, requires_grad=True)
    w = torch.randn(6, 0, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    y = fastconv.conv2d_relu(x, w, b, padding=1)
    y.sum().backward()
    assert torch.equal(b.grad, (b > 0).to(b.dtype) * 2 * 25)
    assert x.grad.shape == x.shape and w.grad.shape == w.shape


def test_zero_input_channels_conv1x1_backward():
    x = torch.randn(2, 0, 5, 5, requires_grad=True)
    w = torch.randn(6, 0, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    res = torch.randn(2, 6, 5, 5, requires_grad=True)
    y = fastconv.conv1x1(x, w, b, residual=res)
    y.sum().backward()
    mask = (b.view(1, -1, 1, 1) + res > 0).to(b.dtype)
    assert torch.equal(b.grad, mask.sum((0, 2, 3)))
    assert torch.equal(res.grad, mask)
    assert x.grad.shape == x.shape and w.grad.shape == w.shape


def test_drop_in_conv1x1_with_no_input_channels():
    """nn.Conv2d(0, C, 1) builds (zero bias bound); fastconv.nn.Conv1x1(0, C) divided by zero."""
    layer = fastconv.nn.Conv1x1(0, 4)
    assert torch.equal(layer.bias, torch.zeros(4))
    with torch.no_grad():
        assert torch.equal(layer(torch.randn(2, 0, 3, 3)), torch.zeros(2, 4, 3, 3))


def _ambiguous_layouts():
    """Inputs whose strides leave the layout open, each as PyTorch reads it (suggest_memory_format)."""
    g = torch.Generator().manual_seed(11)
    one_channel_cl = torch.randn(2, 1, 6, 7, generator=g).contiguous(memory_format=torch.channels_last)
    nchw_1x1 = torch.randn(2, 6, 1, 1, generator=g)                        # strides (6, 1, 1, 1)
    nwhc = torch.randn(2, 7, 6, 5, generator=g).permute(0, 3, 2, 1)         # stride(1) == 1, not NHWC
    nhwc_slice = torch.randn(2, 9, 5, 6, generator=g).contiguous(memory_format=torch.channels_last)[:, 2:7]
    return {"one_channel_cl": one_channel_cl, "nchw_1x1": nchw_1x1, "nwhc": nwhc, "nhwc_slice": nhwc_slice}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(_ambiguous_layouts()))
def test_output_layout_follows_pytorch_on_ambiguous_strides(backend, case):
    """Outputs are laid out as eager's conv / pool / cat lays them out for that input: the rule used
    to call anything with stride(1) == 1 channels_last (an NCHW [N, C, 1, 1], a permuted N,W,H,C)
    and a one-channel channels_last tensor NCHW."""
    x = _ambiguous_layouts()[case]
    c = x.shape[1]
    w3, w1 = torch.randn(4, c, 3, 3), torch.randn(4, c, 1, 1)
    with fastconv.use_backend(backend):
        got = {"conv2d_relu": fastconv.conv2d_relu(x, w3, padding=1),
               "conv1x1": fastconv.conv1x1(x, w1),
               "max_pool2d": fastconv.max_pool2d(x, 3, 1, 1),
               "dense_concat": fastconv.dense_concat([x, x])}
    want = {"conv2d_relu": torch.relu(F.conv2d(x, w3, padding=1)), "conv1x1": torch.relu(F.conv2d(x, w1)),
            "max_pool2d": F.max_pool2d(x, 3, 1, 1), "dense_concat": torch.cat([x, x], 1)}
    for op, y in got.items():
        ref = want[op]
        expected_cl = torch._prims_common.suggest_memory_format(ref) == torch.channels_last
        assert (torch._prims_common.suggest_memory_format(y) == torch.channels_last) == expected_cl, op
        assert_close_rel(y, ref, torch.float32, op)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_concat_of_mixed_layouts_is_laid_out_as_torch_cat(backend):
    """torch.cat is channels_last only when every input is (dense_concat followed features[0])."""
    g = torch.Generator().manual_seed(12)
    a = torch.randn(2, 3, 4, 5, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(2, 4, 4, 5, generator=g)
    for feats in ([a, b], [b, a], [a, a.clone()]):
        with fastconv.use_backend(backend):
            y = fastconv.dense_concat(feats)
        ref = torch.cat(feats, 1)
        assert y.stride() == ref.stride()
        assert torch.equal(y, ref)
