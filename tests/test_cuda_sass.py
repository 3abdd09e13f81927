"""CI check of the built extension's device code, without a GPU: the CUTLASS SM90 conv/GEMM
kernels really use Hopper's warpgroup MMA (HGMMA) and TMA im2col loads, and no kernel of
fastconv's own touches local memory (no STL/LDL: no spills, no stack arrays).

conv1x1's GEMM is the same CUTLASS kernel with a 1x1 filter (csrc/cuda/conv1x1_kernel.cu), so the
sm_90a ConvUniversal kernels cover both; likewise the CUTLASS 2.x ImplicitGemmConvolution kernels,
which must show mma.sync (HMMA) in their SASS. Skips only when the extension was built without CUDA."""
import pytest

from benchmarks import cuda_sass_report as rep

try:
    from fastconv import _build_info
except ImportError:  # never built
    _build_info = None

pytestmark = pytest.mark.skipif(
    _build_info is None or not _build_info.WITH_CUDA or rep.find_extension() is None,
    reason="fastconv._C was built without CUDA (FASTCONV_CUDA=0 or no nvcc): no device code to inspect",
)


@pytest.fixture(scope="module")
def sass():
    tool = rep.find_cuobjdump()
    assert tool, "cuobjdump not found (it ships in the triton wheel: triton/backends/nvidia/bin)"
    so = rep.find_extension()
    by_arch = rep.sass_by_kernel(so, tool)
    names = sorted({n for a in by_arch.values() for n in a})
    return by_arch, rep.demangle(names), rep.resources_by_kernel(so, tool)


def _archs():
    return [a.strip() for a in str(_build_info.CUDA_ARCH_LIST).replace(" ", ";").split(";") if a.strip()]


def test_sm90a_cutlass_kernels_use_hgmma_and_tma_im2col(sass):
    if "9.0a" not in _archs():
        pytest.skip(f"built for {_build_info.CUDA_ARCH_LIST}, without sm_90a")
    by_arch, pretty, _ = sass
    kernels = {n: t for n, t in by_arch.get("sm_90a", {}).items() if "ConvUniversal" in pretty[n]}
    labels = sorted(rep.short_name(pretty[n]) for n in kernels)
    assert labels == [f"cutlass ConvUniversal sm90 fprop {d}" for d in ("bf16", "fp16", "tf32")], labels
    for name, text in kernels.items():
        s = rep.instruction_summary(text)
        assert s["HGMMA"] > 0, f"{rep.short_name(pretty[name])}: no HGMMA in its sm_90a SASS"
        assert s["IM2COL"] > 0, f"{rep.short_name(pretty[name])}: no UTMALDG.*.IM2COL (TMA im2col) loads"
        assert s["HMMA"] == 0


def test_no_local_memory(sass):
    by_arch, pretty, res = sass
    checked = 0
    for arch, kernels in by_arch.items():
        for name, text in kernels.items():
            if arch != "sm_90a" and "ConvUniversal" in pretty[name]:
                continue  # the SM90 kernels' stubs for other targets (a printf "wrong arch" body)
            s = rep.instruction_summary(text)
            label = f"{arch} {rep.short_name(pretty[name])}"
            assert s["STL"] == 0 and s["LDL"] == 0, f"{label}: local memory (STL {s['STL']}, LDL {s['LDL']})"
            r = res.get(arch, {}).get(name)
            if r is not None:
                assert r.get("LOCAL", 0) == 0 and r.get("STACK", 0) == 0, f"{label}: {r}"
            checked += 1
    assert checked >= 8, f"only {checked} kernels inspected"


def test_vectorized_copies_in_channels_last_kernels(sass):
    """max_pool2d's and dense_concat's channels_last paths move 16 bytes per access."""
    by_arch, pretty, _ = sass
    for arch, kernels in by_arch.items():
        vec = {rep.short_name(pretty[n]): rep.instruction_summary(t) for n, t in kernels.items()
               if "_vec_kernel" in pretty[n]}
        assert vec, f"{arch}: no vectorized kernels found"
        for label, s in vec.items():
            assert s["LDG.128"] > 0 and s["STG.128"] > 0, f"{arch} {label}: no 128-bit loads/stores"


def test_sm80_cutlass_kernels_use_hmma(sass):
    """The CUTLASS 2.x kernels (fp16, bf16, TF32; fp16/bf16 few-channels) use mma.sync tensor cores in every target they are
    built for: sm_80, and sm_90a (where the tests force them, FASTCONV_CUTLASS_SM80=force)."""
    by_arch, pretty, _ = sass
    archs = [a for a in ("sm_80", "sm_90a") if a in by_arch]
    assert archs, f"no sm_80 or sm_90a code in the extension (built for {_build_info.CUDA_ARCH_LIST})"
    for arch in archs:
        kernels = {n: t for n, t in by_arch.get(arch, {}).items() if "ImplicitGemmConvolution" in pretty[n]}
        labels = sorted(rep.short_name(pretty[n]) for n in kernels)
        want = ["bf16", "bf16 few-channels", "fp16", "fp16 few-channels", "tf32"]
        assert labels == [f"cutlass ImplicitGemmConvolution sm80 fprop {d}" for d in want], (arch, labels)
        for name, text in kernels.items():
            s = rep.instruction_summary(text)
            assert s["HMMA"] > 0, f"{arch} {rep.short_name(pretty[name])}: no HMMA"
            assert s["HGMMA"] == 0
