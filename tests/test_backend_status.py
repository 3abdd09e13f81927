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


def test_triton_interpret_set_after_import_is_reported():
    """Whether Triton is interpreted is settled at import: set later, the status said 'available'
    and a triton call failed with a raw Triton error."""
    import subprocess
    import sys

    code = ("import os, torch, fastconv\n"
            "os.environ['TRITON_INTERPRET'] = '1'\n"
            "print(fastconv.backend_status()['triton'])\n"
            "print('triton' in fastconv.available_backends())\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    if torch.cuda.is_available():
        pytest.skip("with a CUDA device Triton runs compiled whatever TRITON_INTERPRET says")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    status, available = out.stdout.strip().splitlines()[-2:]
    assert "was set after fastconv was imported" in status
    assert available == "False"


def test_use_backend_inside_torch_compile():
    """The compiled graph runs the public ops after the block was traced, so a selection made
    inside it silently did not apply (auto ran). fullgraph=True: a clear error; otherwise the
    block runs eagerly (a graph break) and the selection holds."""
    from torch.profiler import profile

    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)

    def f(x, w):
        with fastconv.use_backend("reference"):
            return fastconv.conv2d_relu(x, w)

    with pytest.raises(Exception, match="use_backend inside a torch.compile"):
        torch.compile(f, backend="aot_eager", fullgraph=True)(x, w)
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager")
    compiled(x, w)
    with profile() as prof:
        y = compiled(x, w)
    names = {e.name for e in prof.events()}
    assert "aten::convolution" in names and not any(n.startswith("fastconv::_conv2d_relu_") for n in names)
    torch.testing.assert_close(y, torch.relu(torch.nn.functional.conv2d(x, w)))


def test_public_names_resolve_once_each():
    """DESIGN §2's fixed names: each in __all__ once, and each importable (``from fastconv import *``)."""
    import fastconv.models

    for module in (fastconv, fastconv.models, fastconv.nn):
        assert len(module.__all__) == len(set(module.__all__)), module.__name__
        assert all(hasattr(module, name) for name in module.__all__), module.__name__
    for name in ("conv2d_relu", "conv1x1", "max_pool2d", "dense_concat", "convert", "use_backend",
                 "available_backends", "backend_status"):
        assert name in fastconv.__all__
    for name in fastconv.models.__all__:  # help() on a builder says what weights= takes
        if name.islower():
            doc = getattr(fastconv.models, name).__doc__
            assert f"torchvision.models.{name}``" in doc and '"DEFAULT"' in doc, name
