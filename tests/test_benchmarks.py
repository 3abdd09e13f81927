"""The CPU-testable parts of the benchmarks: the traced shape lists, their helpers, the GPU
scripts' plans, tables and CPU behaviour, and the bench timing/numerics helpers."""
import os

import time

import pytest
import torch

from benchmarks import gpu_models, gpu_ops, shapes as S
from fastconv import _bench, _devices
from fastconv.ops import reference
from fastconv._table import fmt_si, render_table
from tests.utils import rel_err


def test_committed_shapes_match_a_fresh_trace():
    fresh = S.trace()
    for name, items in fresh.items():
        assert getattr(S, name) == items, f"{name} is stale: run python benchmarks/shapes.py --write"


def test_shapes_cover_the_networks():
    assert len(S.DENSE_BLOCK_SHAPES) == 4 and [d.num_layers for d in S.DENSE_BLOCK_SHAPES] == [6, 12, 24, 16]
    stem = S.Conv(3, 64, 224, 224, (7, 7), (2, 2), (3, 3), ("googlenet", "resnet50", "densenet121"), 3)
    assert stem in S.CONV_SHAPES and stem.out_hw == (112, 112)
    assert any(s.stride == 2 for s in S.CONV1X1_SHAPES)  # ResNet's projection shortcuts
    for s in S.POOL_SHAPES:  # out_hw follows PyTorch, ceil_mode included
        y = torch.nn.functional.max_pool2d(torch.empty(1, 1, s.height, s.width, device="meta"), s.kernel, s.stride,
                                           s.padding, ceil_mode=s.ceil_mode)
        assert tuple(y.shape[2:]) == s.out_hw, s
    for s in S.CONV_SHAPES + S.CONV1X1_SHAPES:
        assert s.macs() > 0 and set(s.nets) <= set(S.NETWORKS)
    # the traced MACs add up to the networks' totals (ResNet-50: 4.09 GMACs without its fc)
    resnet = sum(s.macs() * s.count for s in S.CONV_SHAPES + S.CONV1X1_SHAPES if s.nets == ("resnet50",))
    assert resnet > 3e9


def test_scale_down_keeps_kind_and_validity():
    for s in S.CONV_SHAPES + S.CONV1X1_SHAPES + S.CONV1X1_PROLOGUE_SHAPES + S.POOL_SHAPES + S.DENSE_BLOCK_SHAPES:
        small = S.scale_down(s)
        assert type(small) is type(s) and small.nets == s.nets
        assert small.height <= s.height and min(small.out_hw if hasattr(small, "out_hw") else (1,)) >= 1
    assert S.scale_down(S.Conv(3, 64, 224, 224, (11, 11), (4, 4), (2, 2))).in_channels == 3  # RGB stays RGB


def test_sample_takes_some_of_each_network():
    sample = S.sample(S.CONV_SHAPES)
    assert {n for s in sample for n in s.nets} == set(S.NETWORKS) and len(sample) < len(S.CONV_SHAPES)


def test_gpu_scripts_fail_fast_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_ops.main([]) == 2 and gpu_models.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_plans():
    default, full = gpu_ops.plan(False), gpu_ops.plan(True)
    assert len(full) == 2 * sum(len(getattr(S, k)) for k in gpu_ops.KINDS) and len(default) < len(full) / 4
    assert [c[0] for c in default[:3]] == ["bf16"] * 3
    cases = gpu_models.plan()
    assert cases[0] == ("alexnet", 32, False) and ("resnet50", 32, True) in cases
    assert {b for _, b, _ in cases} == {1, 32, 256}


def test_gpu_markdown():
    env = {"device": "NVIDIA H100 80GB HBM3", "versions": {"torch": "x"}, "peak_name": "H100 SXM"}
    rows = [{"op": "conv2d_relu", "shape": "conv3x3s1-64to64-56x56", "dtype": "bf16", "provider": "torch",
             "ms": 0.05, "tflops": 120.0, "fraction_of_peak": 0.12, "speedup_vs_torch": 1.0, "rel_err": 3e-3,
             "graph_ms": 0.04, "graph_speedup_vs_torch": 1.0},
            {"op": "conv2d_relu", "shape": "conv3x3s1-64to64-56x56", "dtype": "bf16", "provider": "fastconv-cuda",
             "error": "skipped: no kernels"},
            # the copy yardstick has no error column (its KeyError once cost the whole ops table on a GPU)
            {"op": "max_pool2d", "shape": "pool3s2p0-64-55x55", "dtype": "bf16", "provider": "d2d-copy",
             "ms": 0.0092, "gbps": 1674.0, "fraction_of_peak": 0.35, "speedup_vs_torch": 4.19}]
    md = gpu_ops.markdown({"env": env, "batch": 32, "results": rows, "not_run": ["a"]})
    assert "| max_pool2d | pool3s2p0-64-55x55 | bf16 | d2d-copy | 9.2 | 1674 GB/s | 35% | 4.19 | - |  |  |" in md
    assert "| conv2d_relu | conv3x3s1-64to64-56x56 | bf16 | torch | 50.0 | 120.0 TFLOP/s | 12% | 1.00 | 3.0e-03 | 40.0 | 1.00 |" in md
    assert "skipped: no kernels" in md and "not run (time budget): 1 cases" in md
    row = {"model": "resnet50", "batch": 32, "dtype": "bf16", "channels_last": True, "eager_ms": 10.0,
           "fastconv_ms": 8.0, "speedup": 1.25, "fastconv_rel_err": 2e-3, "fastconv_top1_agree": 1.0}
    md = gpu_models.markdown({"env": env, "config": _bench.asdict(_bench.BenchConfig(dtype="bf16")),
                              "results": [row], "not_run": ["vgg16 bs 256"]})
    assert "| resnet50 | 32 | bf16 CL | 10.00 | 8.00 | 1.25 | 2.0e-03 | 100% |" in md and "vgg16 bs 256" in md


def test_table_and_units():
    assert fmt_si(4.089e9) == "4.09G" and fmt_si(1.5e6, "B") == "1.50MB" and fmt_si(12) == "12"
    text = render_table(["a", "n"], [["x", "1.0"], ["long", "10.5"]]).splitlines()
    assert text[2].endswith(" 1.0") and text[3].endswith("10.5")


def test_gpu_spec_lookup():
    assert _devices.gpu_spec("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert _devices.gpu_spec("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert _devices.gpu_spec("h200").bandwidth == 4.8e12
    with pytest.raises(KeyError):
        _devices.gpu_spec("voodoo2")


@pytest.mark.parametrize("name,card", [
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB"), ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"), ("NVIDIA L4", "L4"), ("NVIDIA L40", "L40"), ("l40", "L40"),
    ("NVIDIA L40S", "L40S")])
def test_gpu_spec_matches_whole_words(name, card):
    """By substring, an L40 was an L4 (a third of its bandwidth) and every A100 the 80 GB SXM."""
    assert _devices.gpu_spec(name).name == card


@pytest.mark.parametrize("name", ["NVIDIA GH200 480GB", "NVIDIA L400", "NVIDIA RTX A4000",
                                  "NVIDIA A100-SXM4-40GB MIG 1g.5gb", "NVIDIA H200 MIG 1g.18gb"])
def test_gpu_spec_refuses_cards_it_does_not_know(name):
    with pytest.raises(KeyError, match="unknown GPU"):
        _devices.gpu_spec(name)


def test_time_interleaved_rotates_order_and_inputs():
    calls = []
    fns = {"a": lambda x: calls.append(("a", x)), "b": lambda x: calls.append(("b", x))}
    times = _bench.time_interleaved(fns, [0, 1, 2], repeats=4, warmup=1, device="cpu")
    assert [len(v) for v in times.values()] == [4, 4]
    timed = calls[2:]
    assert [c[0] for c in timed[:4]] == ["a", "b", "b", "a"]  # order alternates per round
    assert {x for name, x in timed if name == "a"} == {0, 1, 2}  # inputs cycled


def test_randomized_batchnorm_changes_the_function():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    x = torch.randn(1, 3, 8, 8)
    before = m(x)
    _bench.randomize_batchnorm(m, torch.Generator().manual_seed(0))
    assert not torch.allclose(before, m(x)) and (m[1].running_var > 0).all()


def test_gpu_ops_prologue_case_on_cpu():
    """DenseNet's 1x1 with its BN-ReLU prologue: every provider computes the same thing as the
    baseline (the prologue reaches both), timed by a stand-in timer."""
    assert S.CONV1X1_PROLOGUE_SHAPES and all("densenet121" in s.nets for s in S.CONV1X1_PROLOGUE_SHAPES)
    shape = S.scale_down(S.CONV1X1_PROLOGUE_SHAPES[0])
    assert S.shape_id(shape).startswith("bnrelu+1x1")
    rows = gpu_ops.run_case("fp32", shape, 2, None, device="cpu",
                            providers=("torch", "fastconv-cpu", "fastconv-reference"),
                            timer=lambda fns, inputs: {name: 1.0 for name in fns}, graph_timer=None)
    assert [r["provider"] for r in rows] == ["torch", "fastconv-cpu", "fastconv-reference"]
    for r in rows:
        if "error" not in r:
            assert r["op"] == "conv1x1" and r["rel_err"] < 1e-5
    from benchmarks._ops import make_case

    case = make_case(shape, 2, "cpu", torch.float32, True)
    x, w, b, scale, shift = case.inputs[0]
    plain = reference.conv1x1(x, w, b, None, None, None, False, [1, 1], True)
    assert not torch.allclose(case.torch_fn(*case.inputs[0]), plain)  # the prologue really is applied


def test_gpu_ops_run_case_on_cpu():
    """The per-shape driver of gpu_ops.py, on the CPU with a stand-in timer (1 ms each)."""
    shape = S.scale_down(S.CONV_SHAPES[0])
    rows = gpu_ops.run_case("fp32", shape, 1, _devices.gpu_spec("h100"), device="cpu",
                            providers=("torch", "fastconv-cpu", "fastconv-cuda"),
                            timer=lambda fns, inputs: {name: 1.0 for name in fns},
                            graph_timer=lambda fns, inputs: {name: 0.5 if name == "torch" else "capture failed"
                                                             for name in fns})
    by = {r["provider"]: r for r in rows}
    assert by["torch"]["graph_ms"] == 0.5 and by["torch"]["graph_speedup_vs_torch"] == 1.0
    if "error" not in by["fastconv-cpu"]:
        assert by["fastconv-cpu"]["graph_error"] == "capture failed" and "graph_ms" not in by["fastconv-cpu"]
    assert by["fastconv-cuda"]["error"].startswith("skipped:")
    if "error" in by["fastconv-cpu"]:
        assert by["fastconv-cpu"]["error"].startswith("skipped:")  # no C++ extension here
    for r in rows:
        if "error" not in r:
            assert r["ms"] == 1.0 and r["rel_err"] < 1e-5 and r["speedup_vs_torch"] == 1.0
            assert r["tflops"] == pytest.approx(2 * shape.macs(1) / 1e-3 / 1e12)
            assert r["fraction_of_peak"] == pytest.approx(r["tflops"] * 1e12 / 494.7e12)  # fp32 → TF32 peak
    # a provider whose timing raises gets an error row; the others keep their numbers
    rows = gpu_ops.run_case("fp32", shape, 1, _devices.gpu_spec("h100"), device="cpu", providers=("torch", "fastconv-reference"),
                            timer=lambda fns, inputs: {"torch": 1.0, "fastconv-reference": "RuntimeError: boom"},
                            graph_timer=None)
    assert rows[0]["ms"] == 1.0 and rows[1]["error"] == "timing failed: RuntimeError: boom"
    pool = gpu_ops.run_case("bf16", S.scale_down(S.POOL_SHAPES[0]), 1, None, device="cpu", providers=("torch",),
                            timer=lambda fns, inputs: {name: 2.0 for name in fns}, graph_timer=None)
    assert pool[0]["gbps"] > 0 and pool[0]["fraction_of_peak"] is None


def test_gpu_models_run_plan_budget_and_compile_column():
    cfg = _bench.BenchConfig(models=("a", "b"), device="cpu")
    calls = []

    def measure(p, batch, cfg, with_compile):
        calls.append((p, batch, with_compile))
        if p == "b":
            raise RuntimeError("no kernel")
        row = {"model": p, "batch": batch, "eager_ms": 2.0, "fastconv_ms": 1.0}
        return {**row, "compile_ms": 0.5, "compile_speedup": 4.0} if with_compile else row

    report = {"results": [], "errors": [], "not_run": []}
    cases = [("a", 32, False), ("b", 32, False), ("a", 32, True)]
    gpu_models.run_plan(cfg, cases, 60, report, prepare=lambda name, cfg: name, measure=measure)
    assert report["results"] == [{"model": "a", "batch": 32, "eager_ms": 2.0, "fastconv_ms": 1.0,
                                  "compile_ms": 0.5, "compile_speedup": 4.0}]
    assert report["errors"] == ["b bs 32: RuntimeError: no kernel"]
    report = {"results": [], "errors": [], "not_run": []}
    gpu_models.run_plan(cfg, cases, -1, report, prepare=lambda name, cfg: name, measure=measure)
    assert report["not_run"] == ["a bs 32", "b bs 32", "a bs 32 compile"] and not report["results"]


def test_gpu_check_stages_fit_the_lease():
    """gpu_check.sh's stages after the build stay within DESIGN's 8 minutes, and format cleanly."""
    from benchmarks import gpu_check

    names = [name for name, _, _ in gpu_check.STAGES]
    assert set(gpu_check.DEFAULT_STAGES) <= set(names) and gpu_check.DEFAULT_STAGES[0] == "build"
    assert sum(deadline for name, deadline, _ in gpu_check.STAGES
               if name in gpu_check.DEFAULT_STAGES and name != "build") <= 8 * 60
    for _, _, command in gpu_check.STAGES:
        cmd = command.format(py="python", out="/tmp/o", raw="/tmp/r", xdist=gpu_check._xdist_flags())
        assert "{" not in cmd and "python" in cmd


def test_gpu_check_kills_a_stage_whole_and_packs_its_files(tmp_path):
    """A stage past its deadline is killed with its children (a shell killed alone left pytest
    running into the next stages), and the stages' files come back as one archive."""
    import tarfile

    from benchmarks import gpu_check

    marker = tmp_path / "child-survived"
    t0 = time.time()
    status = gpu_check._run_stage(f"sh -c 'sleep 3; touch {marker}' & wait", str(tmp_path / "s.log"), 1)
    assert status == "cut off at 1 s" and time.time() - t0 < 3
    time.sleep(3)
    assert not marker.exists()
    assert gpu_check._run_stage("exit 3", str(tmp_path / "t.log"), 5) == "failed (exit 3)"
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir(), out.mkdir()
    (raw / "ops.json").write_text("{}")
    gpu_check._pack(str(raw), str(out))
    with tarfile.open(out / "raw.tar.gz") as tar:
        assert "raw/ops.json" in tar.getnames()
    # gpu_check itself terminated (a command's time limit): the running stage's group goes too,
    # and the stage's log is packed
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pid_file = tmp_path / "grandchild.pid"
    driver = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys; sys.path.insert(0, %r); from benchmarks import gpu_check as g; "
        "signal.signal(signal.SIGTERM, g._on_signal(%r, %r)); "
        "g._run_stage('sleep 30 & echo $! > %s; wait', %r, 60)") % (
            root, str(raw), str(out), pid_file, str(raw / "stage.log"))])
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=10) == 128 + signal.SIGTERM
    time.sleep(0.3)
    pid = int(pid_file.read_text())
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    with tarfile.open(out / "raw.tar.gz") as tar:
        assert "raw/stage.log" in tar.getnames()


def test_gpu_graphs_markdown():
    import argparse

    from benchmarks import gpu_graphs

    row = {"model": "resnet18", "batch": 32, "dtype": "bfloat16", "eager_ms": 2.0, "converted_ms": 4.0,
           "graph_ms": 0.5, "graph_gpu_tuned_ms": 0.4, "torch_graph_ms": 0.6, "replay_rel_err": 0.0,
           "gpu_tuned_rel_err": 2e-3, "fallback_rel_err": 1e-3, "ok": True}
    md = gpu_graphs._markdown([row], "bf16", device="NVIDIA H200")
    assert md.startswith("CUDA graphs on NVIDIA H200: bf16")
    assert "| resnet18 | 32 | 2.000 | 4.000 | 0.500 | 4.00 | 0.400 | 0.600 | 1.50 | 2.0e-03 | 1.0e-03 | yes |" in md
    args = argparse.Namespace(markdown=None, json=None, dtype="bf16")
    gpu_graphs._write([row], args)  # no files asked for: nothing written, no error


def test_host_overhead_rows_on_cpu():
    from benchmarks import host_overhead

    rows = host_overhead.measure("cpu", 5, torch.float32)
    paths = {r["path"] for r in rows}
    assert "torch conv+relu" in paths and "fastconv.conv2d_relu [auto]" in paths and "converted layer [auto]" in paths
    assert all(r["us"] > 0 for r in rows if "us" in r)
    md = host_overhead.markdown(rows, {"device": "CPU", "dtype": "fp32", "calls": 5, "versions": {"torch": "x"}})
    assert "| torch conv+relu | 3x3 |" in md and "| converted layer [auto] | 1x1 |" in md


def test_host_instructions_labels_every_path_and_reads_callgrind_dumps(tmp_path):
    """The instruction counter's two halves without valgrind: the child's per-path labels (one per
    timed path, all distinct) and the parent's reading of callgrind's dump files."""
    from benchmarks import host_instructions, host_overhead

    labels = []

    def count(fn, calls, device, label):  # what host_instructions' child does, minus callgrind
        fn()
        labels.append(label)
        return label

    rows = host_overhead.measure("cpu", 1, torch.float32, per_call=count, unit="label")
    assert [r["label"] for r in rows if "label" in r] == labels and len(set(labels)) == len(labels) >= 6
    for i, (label, total) in enumerate([("converted-cpu-3", 5000), ("torch-1", 700)], start=1):
        (tmp_path / f"callgrind.out.{i}").write_text(
            f"# callgrind format\nversion: 1\ndesc: Trigger: dump {label}\n\nevents: Ir\nsummary: 0\n"
            f"fn=(1) f\n0 {total}\ntotals: {total}\n")
    (tmp_path / "callgrind.out").write_text("desc: Trigger: Program termination\ntotals: 99\n")
    assert host_instructions._dump_totals(str(tmp_path / "callgrind.out")) == {"converted-cpu-3": 5000, "torch-1": 700}
    md = host_instructions.markdown([{"path": "converted layer [cpu]", "kernel": "3x3", "instructions": 4321.4}],
                                    {"dtype": "fp32", "calls": 50, "versions": {"torch": "x"}})
    assert "| converted layer [cpu] | 3x3 | 4,321 |" in md


def test_gpu_ops_kernel_switch_providers_only_for_convs_and_restore_env(monkeypatch):
    monkeypatch.delenv("FASTCONV_CUTLASS_SM80", raising=False)
    monkeypatch.delenv("FASTCONV_CUTLASS_SM90_TF32", raising=False)
    providers = ("torch", "fastconv-cuda-sm80", "fastconv-cuda-sm90tf32")

    def rows(dtype, shape):
        return [r["provider"] for r in gpu_ops.run_case(dtype, S.scale_down(shape), 1, None, device="cpu",
                                                        providers=providers, graph_timer=None,
                                                        timer=lambda fns, inputs: {n: 1.0 for n in fns})]
    assert rows("fp32", S.POOL_SHAPES[0]) == ["torch"]
    assert rows("fp32", S.CONV1X1_SHAPES[0]) == list(providers)  # (no CUDA here: rows saying "skipped")
    assert rows("bf16", S.CONV1X1_SHAPES[0]) == ["torch", "fastconv-cuda-sm80"]  # TF32 is fp32's
    with gpu_ops._provider_env("fastconv-cuda-sm80"):
        assert os.environ["FASTCONV_CUTLASS_SM80"] == "force"
    assert "FASTCONV_CUTLASS_SM80" not in os.environ
    monkeypatch.setenv("FASTCONV_CUTLASS_SM80", "1")
    with gpu_ops._provider_env("fastconv-cuda-sm80"):
        assert os.environ["FASTCONV_CUTLASS_SM80"] == "force"
    assert os.environ["FASTCONV_CUTLASS_SM80"] == "1"
    with gpu_ops._provider_env("fastconv-cuda-sm90tf32"):
        assert os.environ["FASTCONV_CUTLASS_SM90_TF32"] == "1"
    assert "FASTCONV_CUTLASS_SM90_TF32" not in os.environ
    with gpu_ops._provider_env("fastconv-cuda"):
        assert "FASTCONV_CUTLASS_SM90_TF32" not in os.environ


class _OneShotBenchmark:
    """pytest-benchmark's fixture under --benchmark-disable: runs the step once, times nothing."""

    def __init__(self):
        self.extra_info = {}

    def __call__(self, step):
        step()


@pytest.mark.parametrize("wrong", [False, True])
def test_benchmark_case_fails_on_a_wrong_result(wrong):
    """The suites recorded the error and passed whatever it was (a conv returning 2y+1 gave
    '5 passed'): a case now fails above the command line's error bound."""
    import contextlib

    from benchmarks import _common as C
    from benchmarks._ops import make_case, torch_result_fp32

    case = make_case(S.scale_down(S.CONV_SHAPES[1]), 1, "cpu", torch.float32, channels_last=False)
    fn = (lambda *a: 2 * case.fastconv_fn(*a) + 1) if wrong else case.fastconv_fn
    bench = _OneShotBenchmark()
    if wrong:
        with pytest.raises(AssertionError, match="relative error .* above 1e-02"):
            C.run(bench, contextlib.nullcontext(), fn, case.inputs, torch_result_fp32(case), warmup=0)
    else:
        C.run(bench, contextlib.nullcontext(), fn, case.inputs, torch_result_fp32(case), warmup=0)
        assert bench.extra_info["rel_err_vs_torch_fp32"] < 1e-5


def test_torch_baseline_is_eager_pytorch_in_the_input_layout():
    """The conv baseline was the oracle (an NCHW copy, then conv, then a separate ReLU): timed on
    channels_last inputs it included a layout copy PyTorch's own conv does not make, and returned
    NCHW. Now PyTorch's conv in the input's layout (one convolution, a channels_last result)."""
    from benchmarks._ops import make_case, torch_result_fp32

    for shape in (S.scale_down(S.CONV_SHAPES[0]), S.scale_down(S.CONV1X1_SHAPES[0])):
        case = make_case(shape, 1, "cpu", torch.float32, channels_last=True)
        with torch.profiler.profile() as prof:
            y = case.torch_fn(*case.inputs[0])
        assert [e.name for e in prof.events()].count("aten::convolution") == 1
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(y, torch_result_fp32(case)) < 1e-5
