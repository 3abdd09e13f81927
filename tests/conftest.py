"""Test setup. TRITON_INTERPRET must be set before any @triton.jit module is imported, so it is
set here, at collection start, whenever no CUDA device is visible (DESIGN §6.1)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# the auto backend's tactic cache: a fresh directory per test session (and xdist worker), never
# the user's ~/.cache; removed when the session ends
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["FASTCONV_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastconv-test-cache-")
atexit.register(shutil.rmtree, os.environ["FASTCONV_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402

import fastconv  # noqa: E402,F401  (import after TRITON_INTERPRET is decided)

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running cases")
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("markers", "fuzz: hypothesis property tests (FASTCONV_FUZZ_EXAMPLES=N: larger run)")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_functional_plans():
    """The public functionals remember their resolved kernels process-wide (fastconv/_fastpath.py):
    a test that patches a kernel table must not meet a plan an earlier test made."""
    fastconv._fastpath.FUNCTIONAL.clear()
    yield
