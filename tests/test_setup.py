"""setup.py: the CUDA architectures a plain `pip install` builds for, and a source archive that
carries every source the extension may compile."""
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_setup():
    # setup.py builds only when run as __main__; imported, it just defines its helpers.
    spec = importlib.util.spec_from_file_location("fastconv_setup_script", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "capabilities, max_sm, expected",
    [
        ([], None, "8.0;9.0a"),               # no GPU visible: A100-class and Hopper
        ([(9, 0)], (12, 0), "9.0a"),          # H100/H200: torch alone would pick 9.0 (no SM90 kernels)
        ([(9, 0), (9, 0)], (12, 0), "9.0a"),  # one entry per architecture
        ([(9, 0), (8, 0)], (12, 0), "8.0;9.0a"),
        ([(8, 6)], (12, 0), "8.6"),
        ([(8, 9)], None, "8.9"),
        ([(12, 1)], (12, 0), "12.0"),         # newer than this torch's CUDA knows: its newest, as torch does
        ([(10, 0), (9, 0)], (9, 0), "9.0a"),  # clamped onto Hopper: still 9.0a
    ],
)
def test_default_cuda_arch_list(capabilities, max_sm, expected):
    assert _load_setup().default_cuda_arch_list(capabilities, max_sm) == expected


def test_arches_parses_torch_lists():
    assert _load_setup()._arches("8.0; 8.6+PTX 9.0a;") == ["8.0", "8.6", "9.0a"]


def test_importing_setup_builds_nothing():
    module = _load_setup()
    assert not hasattr(module, "ext_modules")


def test_sdist_carries_every_extension_source(tmp_path):
    """An sdist made without the extension (FASTCONV_NO_EXT=1, so setuptools itself lists no source)
    still has every C++/CUDA source and header, and no compiled module or stale build record; and
    the test and benchmark suites whole (it had tests/test_*.py without conftest.py, utils.py or
    the subfolders: a suite that could not run), and the LICENSE."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT, src,
        ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                      ".hypothesis", ".benchmarks", "out", "*.so", "*.pyc"),
    )
    env = dict(os.environ, FASTCONV_NO_EXT="1")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src, env=env,
                   check=True, capture_output=True)
    (archive,) = (tmp_path / "dist").iterdir()
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    expected = set()
    for top in ("csrc", "tests", "benchmarks"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            expected.update(os.path.relpath(os.path.join(folder, name), ROOT) for name in files
                            if "__pycache__" not in folder and not name.endswith((".pyc", ".so")))
    assert any(name.endswith(".h") for name in expected) and any(name.endswith(".cu") for name in expected)
    assert {"tests/conftest.py", "tests/utils.py", "tests/ops/__init__.py", "benchmarks/_common.py", "LICENSE"} <= names
    assert expected <= names, sorted(expected - names)
    assert {"setup.py", "pyproject.toml", "README.md", "fastconv/__init__.py"} <= names
    assert not [name for name in names if name.endswith(".so") or name.endswith("_build_info.py")]


@pytest.mark.parametrize("capability", [(7, 0), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)])
def test_default_arch_list_runs_on_the_gpu_it_was_made_for(capability):
    """What a plain build picks for the visible GPU is what fastconv then finds runnable there."""
    from fastconv import _ext

    assert _ext.cuda_arch_gap(capability, _load_setup().default_cuda_arch_list([capability], (12, 0))) is None
