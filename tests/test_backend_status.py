"""backend_status() for the `cuda` backend: an extension whose CUDA kernels cannot run on the
visible GPU (built for other architectures) is reported as such, and `auto` leaves it out, instead
of the first launch failing with "no kernel image is available"."""
import pytest
import torch

import fastconv
from fastconv import _autotune, _ext


@pytest.mark.parametrize("capability, arch_list, runs", [
    ((8, 0), "8.0;9.0a", True),
    ((8, 6), "8.0;9.0a", True),       # an 8.0 cubin runs on later 8.x
    ((8, 9), "8.0;9.0a", True),
    ((9, 0), "8.0;9.0a", True),       # the 9.0a cubin
    ((9, 0), "8.0", False),           # another major version: no
    ((7, 5), "8.0;9.0a", False),      # older than every cubin
    ((10, 0), "8.0;9.0a", False),     # 9.0a runs on 9.0 only
    ((12, 0), "8.0;9.0a", False),
    ((12, 0), "8.0;9.0a+PTX", False),  # 9.0a's PTX is for 9.0a only
    ((12, 0), "8.0+PTX;9.0a", True),   # plain PTX is compiled for later GPUs at load time
    ((8, 6), "8.6", True),
    ((8, 0), "8.6", False),           # a cubin needs at least its minor version
    ((9, 0), "9.0", True),
    ((7, 0), " 7.0 ; 8.0 ", True),
    ((7, 5), "(from the visible GPU)", True),  # an older build's record: unknown, not refused
    ((7, 5), "", True),
])
def test_cuda_arch_gap(capability, arch_list, runs):
    gap = _ext.cuda_arch_gap(capability, arch_list)
    if runs:
        assert gap is None
    else:
        sm = f"{capability[0]}.{capability[1]}"
        assert gap is not None and f"compute capability {sm}" in gap and "TORCH_CUDA_ARCH_LIST=" + sm in gap


@pytest.fixture
def fake_gpu(monkeypatch):
    """A visible GPU of a chosen compute capability, and an extension with CUDA kernels for 8.0;9.0a."""
    def make(capability):
        monkeypatch.setattr(_ext, "load_error", lambda: None)
        monkeypatch.setattr(_ext, "has_cuda_kernels", lambda: True)
        monkeypatch.setattr(_ext, "_arch_list", "8.0;9.0a")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return make


def test_backend_status_names_the_missing_architecture(fake_gpu):
    fake_gpu((7, 5))
    status = fastconv.backend_status()["cuda"]
    assert "compute capability 7.5" in status and "8.0;9.0a" in status
    assert "cuda" not in fastconv.available_backends()
    assert _autotune._find_candidates("conv2d_relu", torch.device("cuda")) == ["triton", "torch"]


def test_backend_status_with_a_matching_architecture(fake_gpu):
    fake_gpu((9, 0))
    assert fastconv.backend_status()["cuda"] == "available"
    assert _autotune._find_candidates("conv2d_relu", torch.device("cuda")) == ["triton", "cuda", "torch"]


def test_use_backend_cuda_raises_the_reason(fake_gpu):
    fake_gpu((12, 0))
    with fastconv.use_backend("cuda"), pytest.raises(RuntimeError, match="compute capability 12.0"):
        fastconv._backend.resolve(torch.device("cuda"), "conv2d_relu")
