"""Thread safety (thread-local backend selection, lazy extension loading, the models' fused-weight
cache) and no memory growth over thousands of calls."""
import gc
import os
import subprocess
import sys
import threading

import pytest
import torch

import fastconv
from fastconv import _backend
from fastconv.ops import reference

from tests.utils import REL_TOL, rel_err

HAS_EXT = "cpu" in fastconv.available_backends()
THREAD_BACKENDS = ["reference"] + (["cpu"] if HAS_EXT else [])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_threads(target, n=4):
    errors = []
    barrier = threading.Barrier(n)

    def wrapped(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            import traceback

            errors.append(f"thread {i}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, "\n".join(errors)


def _one_call(kind, g, dtype, backend):
    """One random call of an op under ``backend``; returns (result, fp64 reference)."""
    n, c, h, w = (int(v) for v in torch.randint(1, 5, (4,), generator=g)) if kind != "concat" else (2, 3, 5, 4)
    h, w = h + 3, w + 3
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    if int(torch.randint(0, 2, (1,), generator=g)):
        x = x.contiguous(memory_format=torch.channels_last)
    with fastconv.use_backend(backend):
        assert _backend.current_backend() == backend
        if kind == "conv":
            wt = torch.randn(5, c, 3, 3, generator=g, dtype=torch.float64)
            b = torch.randn(5, generator=g, dtype=torch.float64)
            y = fastconv.conv2d_relu(x.to(dtype), wt.to(dtype), b.to(dtype), padding=1)
            ref = reference.conv2d_relu(x, wt, b, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, True)
        elif kind == "conv1x1":
            wt = torch.randn(6, c, generator=g, dtype=torch.float64)
            s = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
            y = fastconv.conv1x1(x.to(dtype), wt.to(dtype), stride=2, in_scale=s.to(dtype), in_relu=True)
            ref = reference.conv1x1(x, wt, None, None, s, None, True, [2, 2], True)
        elif kind == "pool":
            y = fastconv.max_pool2d(x.to(dtype), 3, 2, 1, ceil_mode=True)
            ref = torch.nn.functional.max_pool2d(x.to(dtype), 3, 2, 1, ceil_mode=True).double()
        else:
            feats = [x.to(dtype), x[:, :2].to(dtype)]
            y = fastconv.dense_concat(feats)
            ref = torch.cat(feats, 1).double()
        assert _backend.current_backend() == backend  # nothing else changed this thread's choice
    return y, ref


def test_ops_from_four_threads():
    """4 threads, each on its own backend (thread-local use_backend), mixed ops, shapes, dtypes and
    layouts; every result checked against the float64 reference."""
    kinds = ["conv", "conv1x1", "pool", "concat"]
    dtypes = [torch.float32, torch.float64, torch.bfloat16]

    def work(i):
        g = torch.Generator().manual_seed(100 + i)
        for it in range(60):
            backend = THREAD_BACKENDS[(i + it) % len(THREAD_BACKENDS)]
            kind, dtype = kinds[(i + it) % len(kinds)], dtypes[(i * 7 + it) % len(dtypes)]
            y, ref = _one_call(kind, g, dtype, backend)
            assert y.dtype == dtype
            err = rel_err(y, ref)
            assert err <= REL_TOL[dtype] * 2, f"{kind} {dtype} on {backend}: relative error {err:.2e}"
        assert _backend.current_backend() == "auto"

    _run_threads(work)


def test_use_backend_is_thread_local():
    """A backend set in one thread is not seen by another, even while both are inside use_backend."""
    inside = threading.Barrier(2)
    seen = {}

    def work(i):
        name = THREAD_BACKENDS[i % len(THREAD_BACKENDS)] if i == 0 else "reference"
        with fastconv.use_backend(name):
            inside.wait()
            seen[i] = _backend.current_backend()
            inside.wait()
        seen[f"after{i}"] = _backend.current_backend()

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    with fastconv.use_backend("reference"):
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert _backend.current_backend() == "reference"
    assert seen[0] == THREAD_BACKENDS[0] and seen[1] == "reference"
    assert seen["after0"] == seen["after1"] == "auto"


def test_lazy_extension_load_from_threads():
    """The extension's first load, raced by 8 threads in a fresh process: one import, one answer."""
    code = r"""
import threading, importlib
import fastconv._ext as ext
calls = []
real = importlib.import_module
def counting(name, *a, **k):
    if name == "fastconv._C":
        calls.append(name)
    return real(name, *a, **k)
ext.importlib.import_module = counting
barrier = threading.Barrier(8)
results = []
def work():
    barrier.wait()
    results.append(ext.load_error())
ts = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
assert len(set(results)) == 1, results
assert len(calls) <= 1, calls
print("OK", results[0], len(calls))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK")
    if HAS_EXT:
        assert proc.stdout.split()[1] == "None"


def test_model_fused_cache_from_four_threads():
    """4 threads call one fastconv.models.resnet18().eval() at once, right after a parameter change
    (the fused copy is rebuilt once, under a lock); every output matches torchvision's."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = fastconv.models.resnet18(num_classes=10).eval()
    ref_model = torchvision.models.resnet18(num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(4)]
    for round_ in range(3):
        with torch.no_grad():
            # an optimizer-like in-place change, and a BatchNorm statistics change
            model.conv1.weight.mul_(1.1)
            model.layer1[0].bn1.running_var.add_(0.5)
            model.fc.bias.add_(round_)
        ref_model.load_state_dict(model.state_dict())
        with torch.no_grad():
            refs = [ref_model(x) for x in xs]
        results = {}
        builds_before = id(model.__dict__.get("_fused_cache"))

        def work(i):
            with torch.no_grad():
                results[i] = model(xs[i])

        _run_threads(work)
        for i in range(4):
            err = rel_err(results[i], refs[i])
            assert err < 1e-4, f"round {round_}, thread {i}: relative error {err:.2e}"
        assert id(model.__dict__.get("_fused_cache")) != builds_before  # rebuilt after the change


# ---------------------------------------------------------------------------------------------
# no leaks

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mixed_calls(count):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 9, generator=g)
    w = torch.randn(6, 4, 3, 3, generator=g)
    w1 = torch.randn(6, 4, 1, 1, generator=g)
    buf = torch.empty(2, 10, 9, 9)
    for i in range(count):
        backend = THREAD_BACKENDS[i % len(THREAD_BACKENDS)]
        with fastconv.use_backend(backend):
            k = i % 6
            if k == 0:
                fastconv.conv2d_relu(x, w, padding=1, residual=None)
            elif k == 1:
                fastconv.conv1x1(x, w1, in_scale=x[0, :, 0, 0], in_relu=True, out=buf[:, 4:])
            elif k == 2:
                fastconv.max_pool2d(x, 3, 2, 1)
            elif k == 3:
                fastconv.dense_concat([x, buf[:, :3]])
            elif k == 4:
                xr = x.detach().requires_grad_()
                fastconv.conv2d_relu(xr, w, padding=1).sum().backward()
            else:
                for bad in (lambda: fastconv.conv2d_relu(x, w[:4], padding=1, out=x),  # overlap
                            lambda: fastconv.max_pool2d(x, 20)):  # kernel larger than the input
                    try:  # the error paths must not leak either
                        bad()
                        raise AssertionError("expected an error")
                    except (RuntimeError, ValueError):
                        pass


def test_no_memory_growth():
    _mixed_calls(300)  # warm up: allocator pools, lazy imports, caches
    gc.collect()
    before = _rss_bytes()
    _mixed_calls(3000)
    gc.collect()
    growth = _rss_bytes() - before
    assert growth < 8 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 3000 calls"
