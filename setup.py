"""Build fastconv and its optional C++/CUDA extension ``fastconv._C``.

Environment:
  FASTCONV_NO_EXT=1   skip the extension (pure Python: triton and reference backends)
  FASTCONV_CUDA=1|0   force the CUDA sources on (no GPU needed to compile) or off;
                      unset: on when torch has CUDA and nvcc is found
  TORCH_CUDA_ARCH_LIST  unset: the visible GPUs' architectures with Hopper as "9.0a", or "8.0;9.0a"
                      when no GPU is visible; the CUTLASS SM90 kernels need "9.0a" in it
                      (FASTCONV_SM90A), else the cuda backend uses its other kernels on Hopper
  CUDA_HOME           the toolkit; found from nvcc otherwise (wrapper scripts are followed)
Build against the installed torch: pip install --no-build-isolation .
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"[fastconv setup] {msg}", file=sys.stderr)


def _is_toolkit(path):
    # cuda_runtime.h, not just an include/ folder: /usr/local holds a bin/nvcc wrapper script and an
    # unrelated include/, and taking it as the toolkit made the link step look for -lcudart there.
    return (
        bool(path)
        and os.path.isfile(os.path.join(path, "bin", "nvcc"))
        and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))
    )


def find_cuda_home():
    """The CUDA toolkit root: $CUDA_HOME/$CUDA_PATH, the toolkit behind `nvcc` on PATH (following
    symlinks and `exec .../bin/nvcc` wrapper scripts), then /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        try:
            with open(real, "rb") as f:
                head = f.read(4096)
            if head.startswith(b"#!"):  # a wrapper script: the toolkit is the one it execs
                for match in re.finditer(rb"(/[^\s\"']+)/bin/nvcc", head):
                    candidates.append(match.group(1).decode())
        except OSError:
            pass
        candidates.append(os.path.dirname(os.path.dirname(real)))
    candidates.append("/usr/local/cuda")
    for path in candidates:
        if _is_toolkit(path):
            return os.path.realpath(path)
    return None


def _site_packages_dirs():
    import site

    dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
    import torch

    dirs.append(os.path.dirname(os.path.dirname(torch.__file__)))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def nvidia_wheel_includes():
    """Include folders of torch's nvidia-* wheels (a slim toolkit lacks cusparse.h and friends)."""
    found = []
    for sp in _site_packages_dirs():
        found += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "include")))
    return list(dict.fromkeys(found))


def cutlass_includes():
    """CUTLASS headers from the nvidia-cutlass wheel (cutlass_library/source/...)."""
    try:
        import cutlass_library
    except ImportError:
        return []
    base = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
    dirs = [os.path.join(base, "include"), os.path.join(base, "tools", "util", "include")]
    return [d for d in dirs if os.path.isdir(d)]


def write_build_info(torch_version, with_cuda, arch_list):
    with open(os.path.join(ROOT, "fastconv", "_build_info.py"), "w") as f:
        f.write("# written by setup.py: what fastconv._C was built against\n")
        f.write(f"TORCH_VERSION = {torch_version!r}\nWITH_CUDA = {with_cuda!r}\nCUDA_ARCH_LIST = {arch_list!r}\n")


def _arches(arch_list):
    return [a.strip().replace("+PTX", "") for a in re.split(r"[;\s]+", arch_list) if a.strip()]


def default_cuda_arch_list(capabilities, max_sm=None):
    """TORCH_CUDA_ARCH_LIST when the user set none: with no GPU visible, 8.0;9.0a (A100-class and
    Hopper); otherwise the visible GPUs' architectures, as torch would pick them, but Hopper as 9.0a.
    torch's own pick for an H100 is 9.0, where the CUTLASS SM90 kernels (warpgroup MMA, TMA) cannot be
    built: a plain `pip install` on Hopper would have stubbed its fastest kernels. Like torch, a GPU
    newer than this torch's CUDA knows is built for the newest architecture it does know (max_sm)."""
    if not capabilities:
        return "8.0;9.0a"
    archs = []
    for cap in sorted(set(tuple(c) for c in capabilities)):
        major, minor = min(cap, max_sm) if max_sm else cap
        arch = f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "")
        if arch not in archs:
            archs.append(arch)
    return ";".join(archs)


def _visible_capabilities(torch):
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]


def _torch_max_sm(torch):
    sms = [int(m.group(1)) for a in torch.cuda.get_arch_list() for m in [re.match(r"sm_(\d+)", a)] if m]
    return divmod(max(sms), 10) if sms else None


def extensions():
    if os.environ.get("FASTCONV_NO_EXT", "0") == "1":
        _log("FASTCONV_NO_EXT=1: building without the C++ extension")
        return [], {}
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # torch.utils.cpp_extension reads it at import
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    force = os.environ.get("FASTCONV_CUDA")
    if force == "0":
        with_cuda = False
    elif force == "1":
        if torch.version.cuda is None or cuda_home is None:
            raise RuntimeError(
                f"FASTCONV_CUDA=1 but torch.version.cuda={torch.version.cuda} and CUDA_HOME={cuda_home}: "
                "a CUDA build of torch and nvcc are required to compile the CUDA sources"
            )
        with_cuda = True
    else:
        with_cuda = torch.version.cuda is not None and cuda_home is not None

    sources = [os.path.join("csrc", "fastconv.cpp"), os.path.join("csrc", "cuda_plan.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -fopenmp: at::parallel_for is an inline template whose `#pragma omp` must be compiled here, or
    # the CPU kernels run on one thread. Linux only (Apple's clang has no -fopenmp; MSVC spells it /openmp).
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx_flags = ["-O3"] + openmp
    include_dirs = [os.path.join(ROOT, "csrc")]
    define_macros = []
    arch_list = None
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_cuda_arch_list(_visible_capabilities(torch), _torch_max_sm(torch))
        arch_list = os.environ["TORCH_CUDA_ARCH_LIST"]
        if "9.0" in _arches(arch_list) and "9.0a" not in _arches(arch_list):
            _log(f"TORCH_CUDA_ARCH_LIST={arch_list} has 9.0 but not 9.0a: the CUTLASS SM90 (Hopper) kernels "
                 "need sm_90a and are left out; the cuda backend takes its other kernels on Hopper")
        # .cu: device code (nvcc); .cpp: host-only code that needs the CUDA build's declarations
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        if not cutlass_includes():
            raise RuntimeError(
                "the CUDA sources need the CUTLASS headers of the nvidia-cutlass package "
                "(pip install nvidia-cutlass), or build without them: FASTCONV_CUDA=0"
            )
        # the toolkit's own headers first: the nvidia-* wheels only fill in what a slim toolkit lacks.
        # (With the wheels first, a torch built for a newer CUDA than the local nvcc, e.g. torch 2.15's
        # CUDA 13.2 wheels with nvcc 13.0, put 13.2's cuda_runtime.h before nvcc's own and CCCL
        # stopped the build: "CUDA compiler and CUDA toolkit headers are incompatible".)
        include_dirs += [os.path.join(cuda_home, "include")] + nvidia_wheel_includes() + cutlass_includes()
        define_macros.append(("FASTCONV_WITH_CUDA", "1"))
        # The CUTLASS SM90 kernels (csrc/cuda/cutlass_sm90_conv.cu) have real device code only in
        # an sm_90a build; without it they are stubs and the dispatch (csrc/cuda_plan.h) never
        # picks them. The other targets of the list compile those kernels to stubs as well.
        if "9.0a" in _arches(arch_list):
            define_macros.append(("FASTCONV_SM90A", "1"))
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "--expt-extended-lambda", "-lineinfo"]
        ext = CUDAExtension(
            "fastconv._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=openmp,
        )
    else:
        ext = CppExtension(
            "fastconv._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=openmp,
        )
    _log(f"torch {torch.__version__} (CUDA {torch.version.cuda}); CUDA sources: {'on' if with_cuda else 'off'}")
    _log(f"CUDA_HOME={cuda_home}; TORCH_CUDA_ARCH_LIST={arch_list}")
    _log(f"sources: {sources}")
    _log(f"extra include dirs: {include_dirs}")
    write_build_info(torch.__version__, with_cuda, arch_list)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None or _has_ninja())}


def _has_ninja():
    try:
        import ninja  # noqa: F401
        return True
    except ImportError:
        return False


# Only when run as the build script (pip's backend and `python setup.py` both run it as __main__):
# tests import this file for its helpers without building anything.
if __name__ == "__main__":
    ext_modules, cmdclass = extensions()
    setup(
        packages=find_packages(include=["fastconv", "fastconv.*"]),
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
