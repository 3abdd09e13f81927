"""The auto backend: tactic selection (with injected timers), the on-disk cache, FASTCONV_AUTOTUNE=0,
concurrency, whole-model tuning, and the CUDA-graph API's CPU error."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
import torch.nn as nn

import fastconv
from fastconv import _autotune
import importlib

conv_mod = importlib.import_module("fastconv.ops.conv2d_relu")

needs_cpu_ext = pytest.mark.skipif("cpu" not in fastconv.available_backends(),
                                   reason="the C++ extension (cpu backend) is not built")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(d))
    monkeypatch.delenv("FASTCONV_AUTOTUNE", raising=False)
    fastconv.clear_cache()
    yield d
    fastconv.clear_cache()


class FakeTimer:
    """Deterministic timings per tactic; counts the candidates it was asked to time."""

    def __init__(self, times):
        self.times, self.timed = times, []

    def __call__(self, tactic, fn, device):
        fn()  # the candidate really runs (and must write out)
        self.timed.append(tactic)
        return self.times[tactic]


def never_time(tactic, fn, device):
    raise AssertionError(f"timed {tactic} although the choice should have been cached / heuristic")


def conv_call(c=8, h=10, layout=torch.contiguous_format, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, h, h, generator=g).contiguous(memory_format=layout)
    w = torch.randn(16, c, 3, 3, generator=g) * 0.1
    b = torch.randn(16, generator=g)
    return x, w, b


def run_conv(x, w, b):
    with fastconv.kernel_stats() as stats:
        y = fastconv.conv2d_relu(x, w, b, padding=1)
    (tactic,) = {t for (op, t) in stats.calls if op == "conv2d_relu"}
    return y, tactic


def ref_conv(x, w, b):
    return torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double(), padding=1))


@needs_cpu_ext
@pytest.mark.parametrize("times,expected", [({"cpu": 2.0, "torch": 1.0}, "torch"),
                                            ({"cpu": 1.0, "torch": 2.0}, "cpu")])
def test_selection_follows_fake_timings(times, expected):
    timer = FakeTimer(times)
    x, w, b = conv_call()
    with _autotune.use_timer(timer):
        y, tactic = run_conv(x, w, b)
        assert sorted(timer.timed) == ["cpu", "torch"]
        assert tactic == expected
        torch.testing.assert_close(y.double(), ref_conv(x, w, b), rtol=1e-5, atol=1e-5)
        # same signature: cached in memory, not timed again
        y2, tactic2 = run_conv(*conv_call(seed=1))
        assert tactic2 == expected and len(timer.timed) == 2
        # another layout is another signature: timed again
        _, tactic3 = run_conv(*conv_call(layout=torch.channels_last))
        assert tactic3 == expected and len(timer.timed) == 4


@needs_cpu_ext
def test_cache_round_trip_through_disk(cache_dir):
    x, w, b = conv_call()
    with _autotune.use_timer(FakeTimer({"cpu": 3.0, "torch": 1.0})):
        _, tactic = run_conv(x, w, b)
    assert tactic == "torch"
    files = list(cache_dir.glob("tactics-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["device_key"] == _autotune.device_key(torch.device("cpu"))
    assert list(data["entries"].values()) == ["torch"]
    assert any(k.startswith("conv2d_relu(") for k in data["entries"])
    fastconv.clear_cache()  # a fresh process: only the file remains
    with _autotune.use_timer(never_time):
        _, tactic = run_conv(x, w, b)
    assert tactic == "torch"


@needs_cpu_ext
def test_cache_file_depends_on_thread_count(cache_dir):
    x, w, b = conv_call()
    with _autotune.use_timer(FakeTimer({"cpu": 3.0, "torch": 1.0})):
        run_conv(x, w, b)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        timer = FakeTimer({"cpu": 1.0, "torch": 3.0})
        with _autotune.use_timer(timer):
            _, tactic = run_conv(x, w, b)
        assert tactic == "cpu" and timer.timed  # other thread count: tuned again, its own file
    finally:
        torch.set_num_threads(threads)
    assert len(list(cache_dir.glob("tactics-*.json"))) == 2


@needs_cpu_ext
def test_corrupt_cache_warns_then_works(cache_dir):
    path = _autotune.CACHE.path(_autotune.device_key(torch.device("cpu")))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write('{"entries": {"conv2d_relu(')  # truncated JSON
    x, w, b = conv_call()
    timer = FakeTimer({"cpu": 1.0, "torch": 2.0})
    with _autotune.use_timer(timer), pytest.warns(RuntimeWarning, match="corrupt"):
        y, tactic = run_conv(x, w, b)
    assert tactic == "cpu" and timer.timed
    torch.testing.assert_close(y.double(), ref_conv(x, w, b), rtol=1e-5, atol=1e-5)
    data = json.loads(open(path).read())  # rewritten whole
    assert list(data["entries"].values()) == ["cpu"]


@needs_cpu_ext
def test_wrong_content_is_ignored_with_a_warning(cache_dir):
    path = _autotune.CACHE.path(_autotune.device_key(torch.device("cpu")))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"device_key": "another machine", "entries": {"x": "cpu"}}, f)
    with _autotune.use_timer(FakeTimer({"cpu": 2.0, "torch": 1.0})), pytest.warns(RuntimeWarning, match="corrupt"):
        _, tactic = run_conv(*conv_call())
    assert tactic == "torch"


@needs_cpu_ext
def test_unwritable_cache_dir_warns_and_keeps_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(blocker / "cache"))  # cannot be created, even by root
    fastconv.clear_cache()
    timer = FakeTimer({"cpu": 2.0, "torch": 1.0})
    x, w, b = conv_call()
    with _autotune.use_timer(timer), pytest.warns(RuntimeWarning, match="cannot be written"):
        y, tactic = run_conv(x, w, b)
    assert tactic == "torch"
    torch.testing.assert_close(y.double(), ref_conv(x, w, b), rtol=1e-5, atol=1e-5)
    with _autotune.use_timer(never_time), warnings.catch_warnings():
        warnings.simplefilter("error")
        _, tactic = run_conv(x, w, b)  # the in-memory choice, no new warning
    assert tactic == "torch"


@needs_cpu_ext
def test_autotune_off_uses_heuristics_without_timing(monkeypatch, cache_dir):
    monkeypatch.setenv("FASTCONV_AUTOTUNE", "0")
    with _autotune.use_timer(never_time):
        y, tactic = run_conv(*conv_call())
    assert tactic == _autotune.heuristic("conv2d_relu", torch.device("cpu")) == "cpu"
    assert not list(cache_dir.glob("tactics-*.json"))


@needs_cpu_ext
def test_no_timing_while_compiling(monkeypatch, cache_dir):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with _autotune.use_timer(never_time):
        _, tactic = run_conv(*conv_call())
    assert tactic == "cpu"
    assert not list(cache_dir.glob("tactics-*.json"))  # the heuristic choice is not stored


@needs_cpu_ext
def test_errors_propagate_during_tuning(monkeypatch):
    def broken(*args):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(conv_mod.KERNELS, "torch", broken)
    with _autotune.use_timer(FakeTimer({"cpu": 2.0, "torch": 1.0})), pytest.raises(RuntimeError, match="exploded"):
        run_conv(*conv_call())


@needs_cpu_ext
def test_unsupported_candidate_is_left_out(monkeypatch):
    def unsupported(*args):
        raise NotImplementedError("no such kernel")

    monkeypatch.setitem(conv_mod.KERNELS, "torch", unsupported)
    with _autotune.use_timer(FakeTimer({"cpu": 2.0, "torch": 1.0})):
        _, tactic = run_conv(*conv_call())
    assert tactic == "cpu"


def test_concurrent_threads_store_every_entry(cache_dir):
    dkey = "test device | threads"

    def work(t):
        for i in range(25):
            _autotune.CACHE.store(dkey, f"sig-{t}-{i}", "cpu" if i % 2 else "torch")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    data = json.loads(open(_autotune.CACHE.path(dkey)).read())
    assert len(data["entries"]) == 150
    assert data["entries"]["sig-3-4"] == "torch" and data["entries"]["sig-5-7"] == "cpu"
    assert not [p for p in os.listdir(cache_dir) if p.endswith(".tmp")]


def test_two_processes_writing_the_cache(cache_dir):
    dkey = "test device | processes"
    script = (
        "import sys\n"
        "from fastconv import _autotune\n"
        "for i in range(40):\n"
        f"    _autotune.CACHE.store({dkey!r}, f'sig-{{sys.argv[1]}}-{{i}}', 'torch')\n"
    )
    env = dict(os.environ, FASTCONV_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(p)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for p in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    data = json.loads(open(_autotune.CACHE.path(dkey)).read())
    assert len(data["entries"]) == 80  # neither process lost the other's entries


@needs_cpu_ext
def test_tune_model_progress_and_cache(cache_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 1), nn.ReLU()).eval()
    fused = fastconv.convert(model)
    x = torch.randn(1, 3, 16, 16)
    stream = io.StringIO()
    timer = FakeTimer({"cpu": 1.0, "torch": 2.0})
    with _autotune.use_timer(timer):
        result = fastconv.tune(fused, x, stream=stream)
    assert result == {"signatures": 3, "tuned": 3}  # conv2d_relu, max_pool2d, conv1x1
    lines = stream.getvalue().strip().splitlines()
    assert [ln.split("] ")[1].split()[0] for ln in lines] == ["1/3", "2/3", "3/3"]
    with _autotune.use_timer(never_time):
        assert fastconv.tune(fused, x, stream=io.StringIO()) == {"signatures": 0, "tuned": 0}
        with torch.inference_mode():
            torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


@needs_cpu_ext
def test_convert_with_example_input_tunes(cache_dir):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    timer = FakeTimer({"cpu": 2.0, "torch": 1.0})
    with _autotune.use_timer(timer):
        fused = fastconv.convert(model, example_input=torch.randn(1, 3, 12, 12))
    assert timer.timed == ["cpu", "torch"]
    with _autotune.use_timer(never_time), fastconv.kernel_stats() as stats:
        fused(torch.randn(1, 3, 12, 12))
    assert stats.calls == {("conv2d_relu", "torch"): 1}
    assert stats.own_fraction() == 0.0 and stats.conv_flops() == 2 * 8 * 144 * 27


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_graph_without_cuda_raises():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        fastconv.convert(model, example_input=torch.randn(1, 3, 8, 8), cuda_graph=True)
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        fastconv.CUDAGraphModel(fastconv.convert(model), torch.randn(1, 3, 8, 8))


@needs_cpu_ext
def test_gpu_timing_mode_uses_its_timer_and_its_own_cache_key(monkeypatch, cache_dir):
    """timing_mode("gpu") (CUDAGraphModel(tune_by="gpu")): candidates are timed by gpu_time_timer,
    and the choices are kept under their own device key, so eager calls never see them."""
    gpu = FakeTimer({"cpu": 1.0, "torch": 2.0})
    monkeypatch.setattr(_autotune, "gpu_time_timer", gpu)
    x, w, b = conv_call()
    wall_key = _autotune.device_key(x.device)
    with _autotune.timing_mode("gpu"):
        gpu_key = _autotune.device_key(x.device)
        y, tactic = run_conv(x, w, b)
    assert gpu_key == wall_key + " | timing gpu"
    assert tactic == "cpu" and sorted(gpu.timed) == ["cpu", "torch"]
    torch.testing.assert_close(y.double(), ref_conv(x, w, b), rtol=1e-5, atol=1e-5)
    sig = next(k for (dk, k) in _autotune.CACHE._memory if dk == gpu_key)
    assert _autotune.CACHE.lookup(gpu_key, sig) == "cpu" and _autotune.CACHE.lookup(wall_key, sig) is None
    assert len(list(cache_dir.glob("tactics-*.json"))) == 1  # the gpu-timed file only
    # an eager call of the same signature tunes by wall time (the default timer, here a fake)
    with _autotune.use_timer(FakeTimer({"cpu": 2.0, "torch": 1.0})):
        _, tactic = run_conv(x, w, b)
    assert tactic == "torch" and _autotune.current_timing() == "wall"
    with pytest.raises(ValueError, match="timing mode"):
        with _autotune.timing_mode("host"):
            pass
    with pytest.raises(ValueError, match="graph_tune_by"):
        fastconv.convert(nn.Sequential(nn.Conv2d(3, 4, 3)), graph_tune_by="host")
    with pytest.raises(ValueError, match="graph_fallback must be 'eager' or 'raise', got 'nope'"):
        fastconv.convert(nn.Sequential(nn.Conv2d(3, 4, 3)), graph_fallback="nope")  # checked without cuda_graph too


def test_gpu_time_timer_on_the_cpu_falls_back_to_wall_time():
    calls = []
    t = _autotune.gpu_time_timer("torch", lambda: calls.append(1), torch.device("cpu"))
    assert t >= 0 and len(calls) >= 2


@pytest.mark.parametrize("cuda_status,expected", [
    ("available", {"conv2d_relu": ["triton", "cuda", "torch"], "conv1x1": ["triton", "cuda", "torch"],
                   "max_pool2d": ["triton", "cuda", "torch"], "dense_concat": ["triton", "torch"]}),
    ("not built", {op: ["triton", "torch"] for op in ("conv2d_relu", "conv1x1", "max_pool2d", "dense_concat")}),
])
def test_cuda_candidates(monkeypatch, cuda_status, expected):
    monkeypatch.setattr(fastconv._backend, "backend_status", lambda: {"cuda": cuda_status})
    for op, cands in expected.items():
        assert _autotune._find_candidates(op, torch.device("cuda")) == cands


def test_torch_backend_is_selectable():
    assert "torch" in fastconv.available_backends()
    x, w, b = conv_call()
    with fastconv.use_backend("torch"), fastconv.kernel_stats() as stats:
        y = fastconv.conv2d_relu(x, w, b, padding=1, out=torch.empty(2, 20, 10, 10)[:, 2:18])
    assert stats.calls == {("conv2d_relu", "torch"): 1}
    assert stats.copied_bytes == y.numel() * 4  # oneDNN's fresh result copied into the slice, counted
    torch.testing.assert_close(y.double(), ref_conv(x, w, b), rtol=1e-5, atol=1e-5)


@needs_cpu_ext
@pytest.mark.parametrize("backend,own", [("cpu", 1.0), ("torch", 0.0), ("auto", None)])
def test_bench_reports_own_kernel_fraction(backend, own):
    from fastconv import _bench

    cfg = _bench.BenchConfig(models=("resnet18",), size=48, repeats=1, warmup=0, backend=backend)
    (row,) = _bench.bench_model("resnet18", cfg)
    if own is None:
        assert 0.0 <= row["own_flops_frac"] <= 1.0
        assert sum(n for k, n in row["tactics"].items() if k.startswith("conv")) > 0
    else:
        assert row["own_flops_frac"] == own
        assert all(k.endswith(":" + backend) for k in row["tactics"])
    headers, rows = _bench.table_rows([row])
    assert headers[-1] == "own-kernel conv FLOPs" and rows[0][-1].endswith("%")
    assert row["fastconv_rel_err"] < 1e-4


@pytest.mark.parametrize("var, default, on, marker", [("FASTCONV_CUTLASS_SM80", "0", "force", "cutlass_sm80 force"),
                                                      ("FASTCONV_CUTLASS_SM90_TF32", "0", "1", "cutlass_sm90_tf32")])
def test_cuda_device_key_follows_the_cutlass_switches(monkeypatch, var, default, on, marker):
    """These variables change which kernels the `cuda` candidate runs: choices tuned with them are
    kept apart (no GPU needed: the device name is stubbed)."""
    monkeypatch.setattr(_autotune, "device_name", lambda device: "NVIDIA Test GPU")
    cuda = torch.device("cuda", 0)
    for v in ("FASTCONV_CUTLASS_SM80", "FASTCONV_CUTLASS_SM90_TF32"):
        monkeypatch.delenv(v, raising=False)
    off = _autotune.device_key(cuda)
    monkeypatch.setenv(var, default)
    assert _autotune.device_key(cuda) == off
    monkeypatch.setenv(var, on)
    assert _autotune.device_key(cuda) != off and marker in _autotune.device_key(cuda)
    assert marker.split()[0] not in _autotune.device_key(torch.device("cpu"))


def test_cpu_device_key_follows_the_kernel_switches(monkeypatch):
    cpu = torch.device("cpu")
    for var in ("FASTCONV_CPU_WINOGRAD", "FASTCONV_ONEDNN_PREPACK", "FASTCONV_ONEDNN_BF16"):
        monkeypatch.delenv(var, raising=False)
    on = _autotune.device_key(cpu)
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", "1")
    assert _autotune.device_key(cpu) == on
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", "0")
    assert "FASTCONV_CPU_WINOGRAD=0" in _autotune.device_key(cpu)
    monkeypatch.setenv("FASTCONV_ONEDNN_PREPACK", "0")
    assert "FASTCONV_ONEDNN_PREPACK=0" in _autotune.device_key(cpu)
    monkeypatch.setenv("FASTCONV_ONEDNN_BF16", "0")
    assert "FASTCONV_ONEDNN_BF16=0" in _autotune.device_key(cpu)


def test_tune_counts_without_progress_and_keeps_train_mode_buffers(cache_dir):
    """tune(progress=False) reported tuned 0 (only the progress line counted), and tuning a model
    in train mode ran its forward twice, moving BatchNorm's statistics and step counter."""
    torch.manual_seed(0)
    model = fastconv.models.resnet18(num_classes=5).train()
    before = {k: v.clone() for k, v in model.named_buffers()}
    x = torch.randn(2, 3, 32, 32)
    with _autotune.use_timer(FakeTimer({"cpu": 1.0, "torch": 2.0})):
        result = fastconv.tune(model, x, progress=False)
    assert result["signatures"] > 0 and result["tuned"] == result["signatures"]
    for k, v in model.named_buffers():
        assert torch.equal(v, before[k]), k


@needs_cpu_ext
def test_deeply_nested_cache_file_is_ignored_with_a_warning(cache_dir):
    """json.load raises RecursionError (not ValueError) on a deeply nested file: every op call raised."""
    path = _autotune.CACHE.path(_autotune.device_key(torch.device("cpu")))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("[" * 200000 + "]" * 200000)
    x, w, b = conv_call()
    with _autotune.use_timer(FakeTimer({"cpu": 1.0, "torch": 2.0})), pytest.warns(RuntimeWarning, match="corrupt"):
        y, tactic = run_conv(x, w, b)
    assert tactic == "cpu"
    torch.testing.assert_close(y.double(), ref_conv(x, w, b), rtol=1e-5, atol=1e-5)


@needs_cpu_ext
def test_kernel_stats_count_only_the_chosen_tactics_copy(cache_dir):
    """The candidates timed on a call's first run are not that call's copies (55 kB were reported
    for a cpu tactic that copies nothing)."""
    x, w, b = conv_call()
    with _autotune.use_timer(FakeTimer({"cpu": 1.0, "torch": 2.0})), fastconv.kernel_stats() as stats:
        fastconv.conv2d_relu(x, w, b, padding=1)
    assert stats.calls == {("conv2d_relu", "cpu"): 1}
    assert stats.copied_bytes == 0


@needs_cpu_ext
def test_concurrent_tune_calls_count_their_own_signatures(cache_dir):
    results, streams = {}, {}

    def work(i):
        torch.manual_seed(i)
        model = fastconv.convert(nn.Sequential(nn.Conv2d(3, 4 + i, 3, padding=1), nn.ReLU(),
                                               nn.Conv2d(4 + i, 8, 1), nn.ReLU()).eval())
        streams[i] = io.StringIO()
        results[i] = fastconv.tune(model, torch.randn(1, 3, 8 + i, 8 + i), stream=streams[i])

    with _autotune.use_timer(FakeTimer({"cpu": 1.0, "torch": 2.0})):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(4):
        assert results[i] == {"signatures": 2, "tuned": 2}, results
        assert len(streams[i].getvalue().strip().splitlines()) == 2


@needs_cpu_ext
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_tunes(cache_dir):
    """A child forked while a thread held the tuning lock inherited it held: its first untuned call
    waited forever (a DataLoader worker started while the main thread tuned)."""
    started, release = threading.Event(), threading.Event()

    def slow_timer(tactic, fn, device):
        fn()
        started.set()
        release.wait(60)
        return 1.0 if tactic == "cpu" else 2.0

    def tune_in_thread():
        with _autotune.use_timer(slow_timer):
            fastconv.conv2d_relu(*conv_call(c=8), padding=1)

    thread = threading.Thread(target=tune_in_thread)
    thread.start()
    try:
        assert started.wait(60)
        pid = os.fork()
        if pid == 0:  # the child: a new signature must tune (or fall back) and return
            code = 1
            try:
                import signal
                signal.alarm(60)
                # one OpenMP thread, as DataLoader workers run: a child of a process whose OpenMP
                # pool ran is not safe with more (libgomp; plain torch.mm hangs there too)
                torch.set_num_threads(1)
                x, w, b = conv_call(c=5)
                with _autotune.use_timer(FakeTimer({"cpu": 1.0, "torch": 2.0})):
                    y = fastconv.conv2d_relu(x, w, b, padding=1)
                code = 0 if torch.allclose(y.double(), ref_conv(x, w, b), rtol=1e-5, atol=1e-5) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


@needs_cpu_ext
def test_plans_follow_the_thread_count(cache_dir):
    """auto's choices are made per CPU thread count; the fast path kept replaying the choice made
    for the old count."""
    from torch.profiler import profile

    def timer(tactic, fn, device):  # cpu wins at one thread, torch at two
        fn()
        return {("cpu", 1): 1.0, ("torch", 1): 2.0, ("cpu", 2): 2.0, ("torch", 2): 1.0}[
            (tactic, torch.get_num_threads())]

    x, w, b = conv_call()
    threads = torch.get_num_threads()

    def kernels():
        with profile() as prof:
            fastconv.conv2d_relu(x, w, b, padding=1)
        return {e.name for e in prof.events()}

    try:
        with torch.no_grad(), _autotune.use_timer(timer):
            for n, own in ((1, True), (2, False), (1, True)):
                torch.set_num_threads(n)
                fastconv.conv2d_relu(x, w, b, padding=1)
                fastconv.conv2d_relu(x, w, b, padding=1)  # planned
                assert ("fastconv::_conv2d_relu_cpu" in kernels()) == own, n
    finally:
        torch.set_num_threads(threads)


@needs_cpu_ext
def test_kernel_stats_counts_this_threads_calls(cache_dir):
    """Another thread's calls (on another backend) were counted too."""
    x, w, b = conv_call()
    stop, ran = threading.Event(), threading.Event()

    def other():
        with fastconv.use_backend("reference"):
            while not stop.is_set():
                fastconv.conv2d_relu(x, w, b, padding=1)
                ran.set()

    thread = threading.Thread(target=other)
    thread.start()
    try:
        with fastconv.use_backend("cpu"), fastconv.kernel_stats() as stats:
            for _ in range(20):
                fastconv.conv2d_relu(x, w, b, padding=1)
                ran.clear()
                assert ran.wait(30)  # the other thread calls while this one counts
    finally:
        stop.set()
        thread.join()
    assert stats.calls == {("conv2d_relu", "cpu"): 20}
    assert stats.own_fraction() == 1.0


def test_cache_file_is_bounded(cache_dir, monkeypatch):
    """Each store rewrites the file whole: unbounded, the n-th new signature cost O(n)."""
    monkeypatch.setattr(_autotune, "MAX_FILE_ENTRIES", 5)
    dkey = _autotune.device_key(torch.device("cpu"))
    for i in range(8):
        _autotune.CACHE.store(dkey, f"sig{i}", "cpu")
    entries = json.loads(open(_autotune.CACHE.path(dkey)).read())["entries"]
    assert list(entries) == [f"sig{i}" for i in range(3, 8)]  # the oldest dropped


class _FakeClock:
    """A clock that each call of the timed function advances by ``per_call`` seconds."""

    def __init__(self, per_call):
        self.now, self.per_call, self.calls = 0.0, per_call, 0

    def fn(self):
        self.calls += 1
        self.now += self.per_call


@pytest.mark.parametrize("per_call,calls", [(2.0, 1), (0.1, 2), (0.01, 4), (0.001, 9)])
def test_default_timer_repeats_less_for_long_calls(monkeypatch, per_call, calls):
    clock = _FakeClock(per_call)
    monkeypatch.setattr(_autotune, "_clock", lambda device: (lambda: clock.now))
    t = _autotune.default_timer("cpu", clock.fn, torch.device("cpu"))
    assert t == pytest.approx(per_call)
    assert clock.calls == calls  # a 2 s call is timed once, not warmed up and repeated


@pytest.mark.parametrize("times,timed", [({"a": 3.0, "b": 2.0}, ["a", "b", "a"]),
                                         ({"a": 3.0, "b": 0.1}, ["a", "b", "b", "a", "a", "b"])])
def test_slow_candidates_get_one_round(times, timed):
    """When every candidate takes seconds per call, one interleaved round decides (a huge shape's
    first call cost minutes of timing otherwise), and the round's first candidate, whose call paid
    the one-time costs, is timed once more; one fast candidate keeps all the rounds."""
    timer = FakeTimer(times)
    got = _autotune._time_candidates(["a", "b"], 3, timer, lambda t: None, torch.device("cpu"))
    assert got == times
    assert timer.timed == timed


def test_cache_dir_expands_the_home_folder_and_stays_put(monkeypatch, tmp_path):
    _autotune._resolve_cache_dir.cache_clear()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FASTCONV_CACHE_DIR", "~/fastconv-cache")
    assert _autotune.cache_dir() == str(tmp_path / "fastconv-cache")  # not ./~/fastconv-cache
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setenv("FASTCONV_CACHE_DIR", f"rel-{tmp_path.name}/cache")
    first = _autotune.cache_dir()
    assert first == str(tmp_path / "a" / f"rel-{tmp_path.name}" / "cache")
    monkeypatch.chdir(tmp_path / "b")  # a relative path stays where it was first resolved
    assert _autotune.cache_dir() == first
