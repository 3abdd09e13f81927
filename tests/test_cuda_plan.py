"""The cuda backend's dispatch rules (csrc/cuda_plan.h), checked on the CPU through the private op
fastconv::_cuda_plan: which problems the CUTLASS SM90 (and, when enabled, SM80) kernels take and
why the others run the direct kernels. No GPU needed: the op reads shapes, strides, dtypes and
16-byte alignment of CPU (or meta) tensors, with the compute capability, the sm_90a build and
the FASTCONV_CUTLASS_SM80 mode and the FASTCONV_CUTLASS_SM90_TF32 switch passed explicitly."""
import pytest
import torch

from fastconv import _ext

pytestmark = pytest.mark.skipif(
    _ext.load_error() is not None or not hasattr(torch.ops.fastconv, "_cuda_plan"),
    reason="the C++ extension (with fastconv::_cuda_plan) is not built",
)

CL = torch.channels_last


def conv_plan(x, w, out, *, residual=None, stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1,
              cc=90, tf32=False, built=True, sm80=0, sm90_tf32=False):
    return torch.ops.fastconv._cuda_plan("conv2d_relu", x, w, residual, out, list(stride), list(padding),
                                         list(dilation), groups, False, cc, tf32, built, sm80, sm90_tf32)


def problem(n=2, c=32, h=8, w=8, co=32, k=3, dtype=torch.float16, layout=CL, stride=1, pad=1, device="cpu"):
    x = torch.empty(n, c, h, w, dtype=dtype, device=device).contiguous(memory_format=layout)
    wt = torch.empty(co, c, k, k, dtype=dtype, device=device).contiguous(memory_format=CL)
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    out = torch.empty(n, co, oh, ow, dtype=dtype, device=device).contiguous(memory_format=layout)
    return x, wt, out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cutlass_for_aligned_nhwc_fp16_bf16_on_sm90(dtype):
    x, w, out = problem(dtype=dtype)
    assert conv_plan(x, w, out) == "cutlass_sm90"


def test_meta_tensors_work_too():
    x, w, out = problem(device="meta")
    assert conv_plan(x, w, out) == "cutlass_sm90"


@pytest.mark.parametrize("cc", [80, 86, 89, 100, 120])
def test_other_gpus_take_the_direct_kernel(cc):
    x, w, out = problem()
    plan = conv_plan(x, w, out, cc=cc)
    assert plan.startswith("direct:") and "compute capability" in plan


def test_not_built_for_sm90a():
    x, w, out = problem()
    plan = conv_plan(x, w, out, built=False)
    assert plan.startswith("direct:") and "sm_90a" in plan


def test_nchw_input_takes_the_direct_kernel():
    x, w, out = problem(layout=torch.contiguous_format)
    plan = conv_plan(x, w, out)
    assert plan.startswith("direct:") and "channels_last" in plan


def test_groups_take_the_direct_kernel():
    x, _, out = problem()
    w = torch.empty(32, 8, 3, 3, dtype=torch.float16).contiguous(memory_format=CL)
    plan = conv_plan(x, w, out, groups=2)
    assert plan.startswith("direct:") and "groups=2" in plan


def test_three_channel_stem_takes_the_direct_kernel():
    x, w, out = problem(c=3, k=7, stride=2, pad=3, h=32, w=32, co=64)
    plan = conv_plan(x, w, out, stride=(2, 2), padding=(3, 3, 3, 3))
    assert plan.startswith("direct:") and "C_in=3" in plan


def test_unaligned_out_channels():
    x, w, out = problem(co=36)
    plan = conv_plan(x, w, out)
    assert plan.startswith("direct:") and "C_out=36" in plan


@pytest.mark.parametrize("tf32", [False, True])
def test_float32_takes_the_direct_kernel(tf32):
    x, w, out = problem(dtype=torch.float32)
    plan = conv_plan(x, w, out, tf32=tf32)
    assert plan.startswith("direct:") and "float32" in plan
    # with TF32 allowed only the (disabled) CUTLASS 2.x and SM90 TF32 kernels could take it
    assert ("FASTCONV_CUTLASS_SM80=1" in plan) == tf32
    assert ("FASTCONV_CUTLASS_SM90_TF32=1" in plan) == tf32
    assert "SM90_TF32" not in conv_plan(x, w, out, tf32=tf32, cc=80)  # that one is Hopper's


def test_float64_takes_the_direct_kernel():
    x, w, out = problem(dtype=torch.float64)
    plan = conv_plan(x, w, out)
    assert plan.startswith("direct:") and "float64" in plan


def test_out_channel_slice_of_an_nhwc_buffer():
    x, w, _ = problem()
    buf = torch.empty(2, 96, 8, 8, dtype=torch.float16).contiguous(memory_format=CL)
    assert conv_plan(x, w, buf[:, 32:64]) == "cutlass_sm90"  # 64-byte offset, 192-byte pixel pitch
    plan = conv_plan(x, w, buf[:, 4:36])  # 8-byte offset: TMA needs 16
    assert plan.startswith("direct:") and "16-byte aligned" in plan
    odd = torch.empty(2, 100, 8, 8, dtype=torch.float16).contiguous(memory_format=CL)  # 200-byte pitch
    plan = conv_plan(x, w, odd[:, :32])
    assert plan.startswith("direct:") and "pixel strides" in plan


def test_x_channel_slice_of_an_nhwc_buffer():
    _, w, out = problem()
    buf = torch.empty(2, 96, 8, 8, dtype=torch.float16).contiguous(memory_format=CL)
    assert conv_plan(buf[:, 32:64], w, out) == "cutlass_sm90"


def test_residual_layout():
    x, w, out = problem()
    assert conv_plan(x, w, out, residual=torch.empty_like(out)) == "cutlass_sm90"
    plan = conv_plan(x, w, out, residual=out.contiguous())
    assert plan.startswith("direct:") and "residual" in plan


def test_nchw_weight_is_repacked():
    x, w, out = problem()
    plan = conv_plan(x, w.contiguous(), out)
    assert plan.startswith("cutlass_sm90") and "repacked" in plan


@pytest.mark.parametrize("sm80", [0, 2])
def test_weight_not_packed_along_r_is_repacked(sm80):
    """CUTLASS 2.x's filter iterator steps over the R x S taps with the S stride alone: a weight whose
    R stride is not S * (S stride), or whose strides overlap, must be copied to packed KRSC first."""
    x, w, out = problem()
    assert conv_plan(x, w, out, sm80=sm80) == f"cutlass_sm{80 if sm80 else 90}"  # packed CL: taken as is
    wide = torch.empty(32, 32, 3, 5, dtype=torch.float16).contiguous(memory_format=CL)
    transposed = torch.empty(32, 32, 3, 3, dtype=torch.float16).contiguous(memory_format=CL).transpose(2, 3)
    expanded = torch.empty(1, 32, 3, 3, dtype=torch.float16).contiguous(memory_format=CL).expand(32, -1, -1, -1)
    for bad in (wide[..., :3], transposed, expanded):
        plan = conv_plan(x, bad, out, sm80=sm80)
        assert plan.startswith(f"cutlass_sm{80 if sm80 else 90}") and "repacked" in plan, (bad.stride(), plan)
    # a 3x1 slice of a channels_last 3x3 weight has R stride 3*C, S stride C: not flat either
    tall = torch.empty(32, 32, 3, 3, dtype=torch.float16).contiguous(memory_format=CL)[..., :1]
    plan = conv_plan(x, tall, out, padding=(1, 1, 0, 0), sm80=sm80)
    assert "repacked" in plan, plan


def test_empty_or_huge_extents_take_the_direct_kernel():
    x, w, out = problem(c=0)
    assert conv_plan(x, torch.empty(32, 0, 3, 3, dtype=torch.float16), out) == "direct: empty problem"
    x = torch.empty(1, 32, 1, 2**31 + 8, dtype=torch.float16, device="meta").contiguous(memory_format=CL)
    w = torch.empty(32, 32, 1, 1, dtype=torch.float16, device="meta").contiguous(memory_format=CL)
    out = torch.empty(1, 32, 1, 2**28 + 1, dtype=torch.float16, device="meta").contiguous(memory_format=CL)
    for sm80 in (0, 2):
        plan = conv_plan(x, w, out, stride=(1, 8), padding=(0, 0, 0, 0), sm80=sm80)
        assert plan.startswith("direct:") and "2^31-1" in plan, plan


def test_projection_shortcut_stride_and_dilation():
    x, w, out = problem(k=1, stride=2, pad=0, h=16, w=16)
    assert conv_plan(x, w, out, stride=(2, 2), padding=(0, 0, 0, 0)) == "cutlass_sm90"
    x, w, out = problem(k=3, pad=2, h=16, w=16)
    assert conv_plan(x, w, out, padding=(2, 2, 2, 2), dilation=(2, 2)) == "cutlass_sm90"


def test_tma_im2col_limits():
    x, w, out = problem(k=3, pad=0, h=600, w=8)
    plan = conv_plan(x, w, out, padding=(300, 300, 0, 0))
    assert plan.startswith("direct:") and "256" in plan


def test_conv1x1_plans():
    x = torch.empty(2, 64, 8, 8, dtype=torch.float16).contiguous(memory_format=CL)
    w = torch.empty(32, 64, dtype=torch.float16)
    out = torch.empty(2, 32, 8, 8, dtype=torch.float16).contiguous(memory_format=CL)

    def plan1x1(x, w, out, prologue=False, stride=(1, 1)):
        return torch.ops.fastconv._cuda_plan("conv1x1", x, w, None, out, list(stride), [], [], 1, prologue, 90,
                                             False, True, 0)

    assert plan1x1(x, w, out) == "cutlass_sm90"
    # the prologue is a separate fused kernel writing an NHWC temporary: x's own layout is free
    plan = plan1x1(x.contiguous(), w, out, prologue=True)
    assert plan.startswith("cutlass_sm90") and "prologue" in plan
    assert plan1x1(x.contiguous(), w, out).startswith("direct:")
    out2 = torch.empty(2, 32, 4, 4, dtype=torch.float16).contiguous(memory_format=CL)
    assert plan1x1(x, w, out2, stride=(2, 2)) == "cutlass_sm90"
    # a grouped out: rows 8.. of a [40, 64] weight (16-byte aligned since C_in % 8 == 0)
    wbig = torch.empty(40, 64, dtype=torch.float16)
    assert plan1x1(x, wbig[8:], out) == "cutlass_sm90"


def test_bad_arguments_raise():
    x, w, out = problem()
    with pytest.raises(RuntimeError, match="op must be"):
        torch.ops.fastconv._cuda_plan("conv3d", x, w, None, out, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.fastconv._cuda_plan("conv1x1", x, w, None, out, [1, 1], [], [], 1)


def test_cuda_private_op_schemas_exist():
    ops = torch.ops.fastconv
    for name in ("_conv2d_relu_cuda", "_conv1x1_cuda", "_max_pool2d_cuda", "_dense_concat_cuda"):
        schema = str(getattr(ops, name).default._schema)
        assert "Tensor(a!)" in schema, (name, schema)
    assert str(ops._conv1x1_cuda.default._schema).split("(", 1)[1] == \
        str(ops._conv1x1_cpu.default._schema).split("(", 1)[1]
    assert str(ops._max_pool2d_cuda.default._schema).split("(", 1)[1] == \
        str(ops._max_pool2d_cpu.default._schema).split("(", 1)[1]


def test_broadcast_input_takes_the_direct_kernel():
    _, w, out = problem()
    x = torch.empty(1, 32, 8, 8, dtype=torch.float16).contiguous(memory_format=CL).expand(2, 32, 8, 8)
    plan = conv_plan(x, w, out)
    assert plan.startswith("direct:") and "overlap" in plan


# ---- the CUTLASS 2.x (sm_80) kernels: FASTCONV_CUTLASS_SM80 (sm80: 0 off, 1 on, 2 force) ----

@pytest.mark.parametrize("cc", [80, 86, 89])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sm80_kernels_take_ampere_and_ada_when_on(cc, dtype):
    x, w, out = problem(dtype=dtype)
    assert conv_plan(x, w, out, cc=cc, sm80=1) == "cutlass_sm80"
    plan = conv_plan(x, w, out, cc=cc, sm80=0)
    assert plan.startswith("direct:") and "FASTCONV_CUTLASS_SM80=1" in plan


def test_sm80_tf32_for_float32_only_when_tf32_is_allowed():
    x, w, out = problem(dtype=torch.float32, c=4, co=12)  # TF32's 16-byte granule is 4 channels
    assert conv_plan(x, w, out, cc=80, sm80=1, tf32=True) == "cutlass_sm80"
    plan = conv_plan(x, w, out, cc=80, sm80=1, tf32=False)
    assert plan.startswith("direct:") and "without TF32" in plan
    # Hopper has no SM90 TF32 kernel: with the 2.x kernels on, float32/TF32 takes them there too
    assert conv_plan(x, w, out, cc=90, sm80=1, tf32=True) == "cutlass_sm80"
    xh, wh, outh = problem(dtype=torch.float16, c=4, co=12)  # 12 x 2 bytes: the epilogue's 16-byte stores
    plan = conv_plan(xh, wh, outh, cc=80, sm80=1)
    assert plan.startswith("direct:") and "C_out=12 is not a multiple of 8" in plan


def test_sm90_stays_first_on_hopper_unless_forced():
    x, w, out = problem()
    assert conv_plan(x, w, out, cc=90, sm80=1) == "cutlass_sm90"
    assert conv_plan(x, w, out, cc=90, sm80=2) == "cutlass_sm80"
    assert conv_plan(x, w, out, cc=90, sm80=2, built=False) == "cutlass_sm80"  # no sm_90a needed
    for cc in (75, 100, 120):
        plan = conv_plan(x, w, out, cc=cc, sm80=2)
        assert plan.startswith("direct:") and f"compute capability {cc}" in plan


def test_sm80_has_no_tma_limits():
    x, w, out = problem(k=3, pad=0, h=600, w=8)
    assert conv_plan(x, w, out, padding=(300, 300, 0, 0), cc=80, sm80=1) == "cutlass_sm80"
    x, w, out = problem(k=3, pad=1, stride=10, h=64, w=64)
    assert conv_plan(x, w, out, stride=(10, 10), cc=80, sm80=1) == "cutlass_sm80"
    assert "traversal-stride" in conv_plan(x, w, out, stride=(10, 10))


def test_sm80_needs_uniform_pixel_strides_of_out_and_residual():
    x, w, _ = problem()
    buf = torch.empty(2, 96, 8, 8, dtype=torch.float16).contiguous(memory_format=CL)
    assert conv_plan(x, w, buf[:, 32:64], cc=80, sm80=1) == "cutlass_sm80"  # a concat slice: one pitch
    big = torch.empty(2, 32, 16, 8, dtype=torch.float16).contiguous(memory_format=CL)
    crop = big[:, :, :8]  # rows of 8 pixels, then a jump: TMA's 3 strides take it, one row stride can't
    assert conv_plan(x, w, crop) == "cutlass_sm90"
    plan = conv_plan(x, w, crop, cc=80, sm80=1)
    assert plan.startswith("direct:") and "out's pixel strides are not uniform" in plan
    out = torch.empty(2, 32, 8, 8, dtype=torch.float16).contiguous(memory_format=CL)
    plan = conv_plan(x, w, out, residual=crop, cc=80, sm80=1)
    assert plan.startswith("direct:") and "residual's pixel strides are not uniform" in plan
    # 1x1 outputs in a concat buffer: the size-1 H and W carry no stride of their own
    x1, w1, _ = problem(h=1, w=1, k=1, pad=0)
    buf1 = torch.empty(2, 96, 1, 1, dtype=torch.float16).contiguous(memory_format=CL)
    assert conv_plan(x1, w1, buf1[:, 32:64], padding=(0, 0, 0, 0), cc=80, sm80=1) == "cutlass_sm80"


def test_sm80_refuses_tensors_of_2_gib():
    x, w, out = problem(n=1, c=64, h=4096, w=4096, co=64, device="meta")  # 2 GiB of fp16 input
    plan = conv_plan(x, w, out, cc=80, sm80=1)
    assert plan.startswith("direct:") and "2 GiB" in plan
    x, w, out = problem(n=1, c=64, h=2048, w=2048, co=64, device="meta")  # 512 MiB
    assert conv_plan(x, w, out, cc=80, sm80=1) == "cutlass_sm80"


def test_sm80_refuses_a_prologue_temporary_of_2_gib():
    """conv1x1's prologue writes an [N, C, OH, OW] temporary that the 2.x kernel then reads as x."""
    def plan1x1(n):
        x = torch.empty(n, 256, 56, 56, dtype=torch.bfloat16, device="meta")  # NCHW: the prologue reads any layout
        w = torch.empty(128, 256, dtype=torch.bfloat16, device="meta")
        out = torch.empty(n, 128, 56, 56, dtype=torch.bfloat16, device="meta").contiguous(memory_format=CL)
        return torch.ops.fastconv._cuda_plan("conv1x1", x, w, None, out, [1, 1], [], [], 1, True, 80, False, True, 1)
    assert plan1x1(1400).startswith("direct:") and "2 GiB" in plan1x1(1400)  # temporary 2.25 GB
    assert plan1x1(600).startswith("cutlass_sm80") and "prologue" in plan1x1(600)


def test_sm80_mode_comes_from_the_environment(monkeypatch):
    x, w, out = problem()
    monkeypatch.setenv("FASTCONV_CUTLASS_SM80", "1")
    assert conv_plan(x, w, out, cc=80, sm80=None) == "cutlass_sm80"
    monkeypatch.setenv("FASTCONV_CUTLASS_SM80", "force")
    assert conv_plan(x, w, out, cc=90, sm80=None) == "cutlass_sm80"
    monkeypatch.setenv("FASTCONV_CUTLASS_SM80", "yes")
    with pytest.raises(RuntimeError, match="must be 0, 1 or force"):
        conv_plan(x, w, out, cc=80, sm80=None)
    monkeypatch.delenv("FASTCONV_CUTLASS_SM80")
    assert conv_plan(x, w, out, cc=80, sm80=None).startswith("direct:")

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
def test_sm80_takes_three_channel_stems_zero_padded_to_four(dtype, layout):
    x, w, out = problem(c=3, k=7, stride=2, pad=3, h=32, w=32, co=64, dtype=dtype, layout=layout)
    out = out.contiguous(memory_format=CL)
    geo = dict(stride=(2, 2), padding=(3, 3, 3, 3), tf32=True)
    plan = conv_plan(x, w, out, cc=80, sm80=1, **geo)
    assert plan.startswith("cutlass_sm80: C_in=3 zero-padded to 4 channels"), plan  # x is copied: any layout
    assert ("few-channels kernel" in plan) == (dtype != torch.float32)
    if dtype != torch.float32:
        # on Hopper the SM90 kernel refuses C=3; with the 2.x kernels on they take it
        assert conv_plan(x, w, out, cc=90, sm80=1, **geo).startswith("cutlass_sm80: C_in=3")
        assert "C_in=3" in conv_plan(x, w, out, cc=90, sm80=0, **geo)
    x5, w5, out5 = problem(c=5, k=3, dtype=dtype)  # more than 4 channels, unaligned: no padding path
    assert "C_in=5 is not a multiple" in conv_plan(x5, w5, out5, cc=80, sm80=1, tf32=True)


def test_conv1x1_is_never_channel_padded():
    x = torch.empty(2, 3, 8, 8, dtype=torch.float16).contiguous(memory_format=CL)
    w = torch.empty(32, 3, dtype=torch.float16)
    out = torch.empty(2, 32, 8, 8, dtype=torch.float16).contiguous(memory_format=CL)
    plan = torch.ops.fastconv._cuda_plan("conv1x1", x, w, None, out, [1, 1], [], [], 1, False, 80, False, True, 1)
    assert plan.startswith("direct:") and "C_in=3" in plan


# ---- the SM90 kernel's TF32 instantiation: FASTCONV_CUTLASS_SM90_TF32 (sm90_tf32) ----

def test_sm90_tf32_takes_float32_only_when_switched_on_and_tf32_allowed():
    x, w, out = problem(dtype=torch.float32)
    assert conv_plan(x, w, out, tf32=True, sm90_tf32=True) == "cutlass_sm90"
    assert conv_plan(x, w, out, tf32=True, sm90_tf32=False).startswith("direct:")
    plan = conv_plan(x, w, out, tf32=False, sm90_tf32=True)
    assert plan.startswith("direct:") and "without TF32" in plan
    # Hopper only (the kernel is sm_90a), and what it refuses falls to the 2.x TF32 kernel when on
    assert conv_plan(x, w, out, tf32=True, sm90_tf32=True, cc=80).startswith("direct:")
    stem = problem(dtype=torch.float32, c=3, k=7, stride=2, pad=3, h=32, w=32, co=64)
    geo = dict(stride=(2, 2), padding=(3, 3, 3, 3), tf32=True, sm90_tf32=True)
    assert conv_plan(*stem, **geo).startswith("direct:")
    assert conv_plan(*stem, sm80=1, **geo).startswith("cutlass_sm80: C_in=3 zero-padded to 4")
    # TF32's 16-byte granule is 4 channels: C_out=36 is aligned here (not for 16-bit types)
    assert conv_plan(*problem(dtype=torch.float32, co=36), tf32=True, sm90_tf32=True) == "cutlass_sm90"
    x1 = torch.empty(2, 64, 8, 8).contiguous(memory_format=CL)
    o1 = torch.empty(2, 32, 8, 8).contiguous(memory_format=CL)
    assert torch.ops.fastconv._cuda_plan("conv1x1", x1, torch.empty(32, 64), None, o1, [1, 1], [], [], 1, False, 90,
                                         True, True, 0, True) == "cutlass_sm90"


@pytest.mark.parametrize("dtype, c, ok", [(torch.float16, 8, False), (torch.bfloat16, 16, True),
                                          (torch.float16, 24, True), (torch.float16, 32, True),
                                          (torch.float32, 4, False), (torch.float32, 8, True)])
def test_sm90_refuses_fewer_than_32_bytes_of_input_channels(dtype, c, ok):
    """C_in=8 (fp16) trapped the SM90 kernel on an H200; 16 and 24 x bf16 channels ran."""
    x, w, out = problem(dtype=dtype, c=c)
    plan = conv_plan(x, w, out, tf32=True, sm90_tf32=True)
    if ok:
        assert plan == "cutlass_sm90"
    else:
        assert plan.startswith("direct:") and "32 bytes per pixel" in plan, plan
        if dtype != torch.float32 or c % 4 == 0:  # what the 2.x kernels take instead, when on
            assert conv_plan(x, w, out, tf32=True, sm90_tf32=True, sm80=1) == "cutlass_sm80"


def test_sm90_tf32_switch_comes_from_the_environment(monkeypatch):
    x, w, out = problem(dtype=torch.float32)
    monkeypatch.setenv("FASTCONV_CUTLASS_SM90_TF32", "1")
    assert conv_plan(x, w, out, tf32=True, sm90_tf32=None) == "cutlass_sm90"
    monkeypatch.setenv("FASTCONV_CUTLASS_SM90_TF32", "0")
    assert conv_plan(x, w, out, tf32=True, sm90_tf32=None).startswith("direct:")
    monkeypatch.setenv("FASTCONV_CUTLASS_SM90_TF32", "on")
    with pytest.raises(RuntimeError, match="must be 0 or 1"):
        conv_plan(x, w, out, tf32=True, sm90_tf32=None)
    monkeypatch.delenv("FASTCONV_CUTLASS_SM90_TF32")
    assert conv_plan(x, w, out, tf32=True, sm90_tf32=None).startswith("direct:")


@pytest.fixture
def conv_precision():
    """Restores torch's cuDNN float32 settings (legacy flag and the per-op one) after the test."""
    cudnn = torch.backends.cudnn
    saved = (cudnn.conv.fp32_precision, cudnn.fp32_precision)
    yield cudnn
    cudnn.fp32_precision, cudnn.conv.fp32_precision = saved[1], saved[0]


@pytest.mark.parametrize("setting,tf32", [("tf32", True), ("ieee", False), ("legacy-off", False)])
def test_tf32_follows_the_conv_precision_setting(conv_precision, setting, tf32):
    """torch.backends.cudnn.conv.fp32_precision = "ieee" (torch's newer API) made the planner's
    legacy allowTF32CuDNN() query raise, and with it every float32 call of the cuda backend; the
    Triton launchers read the legacy flag the same way."""
    from fastconv.ops.triton import cudnn_conv_tf32

    if setting == "legacy-off":
        conv_precision.allow_tf32 = False
    else:
        conv_precision.conv.fp32_precision = setting
    x, w, out = problem(dtype=torch.float32)
    plan = torch.ops.fastconv._cuda_plan("conv2d_relu", x, w, None, out, [1, 1], [1, 1, 1, 1], [1, 1], 1, False,
                                         90, None, True, 0, False)  # allow_tf32=None: the global setting
    assert ("FASTCONV_CUTLASS_SM80=1" in plan) == tf32
    assert cudnn_conv_tf32() == tf32
