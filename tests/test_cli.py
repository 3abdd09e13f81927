"""The command line: `python -m fastconv summary` totals against torchvision's own figures,
`python -m fastconv bench` end to end on the CPU, and the benchmark suites collecting cleanly."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torchvision

from fastconv.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _summary(capsys, *argv) -> str:
    assert main(["summary", *argv]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("model, params", [
    ("resnet50", 25_557_032), ("alexnet", 61_100_840), ("googlenet", 6_624_904), ("vgg16", 138_357_544),
    ("densenet121", 7_978_856), ("resnext50_32x4d", 25_028_904), ("wide_resnet50_2", 68_883_240)])
def test_summary_totals_match_torchvision(capsys, model, params):
    out = _summary(capsys, model)
    assert f"total: {params:,} parameters" in out
    # MACs as torchvision's weights metadata counts them (GMACs at 224×224, batch 1)
    weights = torchvision.models.get_model_weights(model).DEFAULT
    gmacs = float(re.search(r"= ([\d.]+) GMACs / ([\d.]+) GFLOPs", out).group(1))
    gflops = float(re.search(r"GMACs / ([\d.]+) GFLOPs", out).group(1))
    assert gmacs == pytest.approx(weights.meta["_ops"], abs=0.006)
    assert gflops == pytest.approx(2 * gmacs, abs=0.011)


def test_summary_resnet50_text(capsys):
    out = _summary(capsys, "resnet50")
    assert "25,557,032 parameters" in out and "4.09 GMACs / 8.18 GFLOPs" in out
    # the seed notes' arithmetic: a 3×3 conv 64→64 has 3·3·64·64 weights
    assert re.search(r"layer1\.0\.conv2\s+Conv2d\s+1×64×56×56\s+36,864\s+3·3·64·64", out)


def test_summary_googlenet_aux(capsys):
    assert "total: 6,624,904 parameters" in _summary(capsys, "googlenet")
    out = _summary(capsys, "googlenet", "--aux")
    assert "total: 13,004,888 parameters" in out and "aux1.fc2" in out


def test_summary_roofline(capsys):
    out = _summary(capsys, "alexnet", "--gpu", "h100", "--dtype", "bf16", "--batch", "8")
    assert "989.4 TFLOP/s (bf16 dense, tensor cores), 3.35 TB/s" in out
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.startswith("features.")}
    # ridge point 989.4e12 / 3.35e12 ≈ 295 FLOP/B: the 5×5 conv (≈1000 FLOP/B) is compute-bound,
    # the stem (≈200) and every ReLU memory-bound
    assert rows["features.3"] == "compute" and rows["features.0"] == rows["features.1"] == "memory"
    with pytest.raises(SystemExit, match="unknown GPU"):
        main(["summary", "alexnet", "--gpu", "nosuchcard"])


def test_summary_googlenet_aux_small_input(capsys):
    # the auxiliary heads need training mode, but BatchNorm traces in eval mode: in training mode
    # batch 1 on inception5's 1×1 maps (at 32×32) has one value per channel and BatchNorm refuses it
    out = _summary(capsys, "googlenet", "--input", "32", "--aux")
    assert "total: 13,004,888 parameters" in out
    assert re.search(r"inception5b\.branch1\.bn\s+BatchNorm2d\s+1×384×1×1", out)
    assert re.search(r"aux2\.fc2\s+Linear\s+1×1000", out)


@pytest.mark.parametrize("argv, message, smallest", [
    (["vgg16", "--input", "16"], "argument --input: vgg16 needs an input of at least 32×32, got 16×16", 32),
    (["alexnet", "--input", "32"], "argument --input: alexnet needs an input of at least 63×63, got 32×32", 63),
    (["densenet121", "--input", "8"], "argument --input: densenet121 needs an input of at least 29×29, got 8×8", 29),
    (["resnet18", "--input", "0"], "argument --input: the input size must be positive, got 0 (resnet18 needs at least 1×1)", 1),
    (["resnet18", "--batch", "-1"], "argument --batch: must be at least 1, got -1", None),
], ids=["vgg16-16", "alexnet-32", "densenet121-8", "resnet18-0", "batch-1"])
def test_summary_bad_arguments_are_usage_errors(capsys, argv, message, smallest):
    """An input too small for the model, or a batch below 1: an error line on stderr and exit
    status 2, as argparse gives for a bad argument, not a traceback; the size it names runs."""
    with pytest.raises(SystemExit) as exc:
        main(["summary", *argv])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.splitlines()[-1].startswith(f"python -m fastconv summary: error: {message}")
    if smallest is not None:
        assert f"input 1×3×{smallest}×{smallest}," in _summary(capsys, argv[0], "--input", str(smallest))


def test_summary_input_too_small_from_the_shell():
    proc = subprocess.run([sys.executable, "-m", "fastconv", "summary", "alexnet", "--input", "32"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("python -m fastconv summary: error: argument --input: alexnet needs an input of at least"
                           " 63×63, got 32×32 (its feature maps shrink to nothing before the last layer)\n")


def test_bench_cpu_json(tmp_path):
    path = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "fastconv", "bench", "--models", "resnet18", "--batch", "1",
                           "--size", "64", "--repeats", "2", "--json", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device: CPU" in proc.stdout and "resnet18" in proc.stdout and "speedup" in proc.stdout
    report = json.loads(path.read_text())
    assert report["device"] == "cpu" and report["versions"]["torch"]
    (row,) = report["results"]
    assert (row["model"], row["batch"], row["size"], row["dtype"]) == ("resnet18", 1, 64, "fp32")
    for key in ("eager_ms", "fastconv_ms", "speedup", "fastconv_rel_err", "fastconv_top1_agree"):
        assert key in row
    assert len(row["fastconv_ms_all"]) == 2
    assert row["fastconv_rel_err"] < 1e-4 and row["fastconv_top1_agree"] == 1.0


def test_benchmarks_collect():
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p",
                           "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = int(re.search(r"(\d+) tests? collected", proc.stdout).group(1))
    assert collected >= 5 * 4  # five suites, four providers each
    for suite in ("bench_conv2d_relu", "bench_conv1x1", "bench_max_pool2d", "bench_dense_block", "bench_models"):
        assert f"benchmarks/{suite}.py::" in proc.stdout
    assert "bench_cpu_" not in proc.stdout  # the standalone scripts are not suites


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["--batch", "1,0"], "argument --batch: must be at least 1, got 0"),
    (["--warmup", "-1"], "argument --warmup: must be at least 0, got -1"),
    (["--size", "0"], "argument --size: must be at least 1, got 0"),
], ids=["repeats-0", "threads-0", "batch-0", "warmup-negative", "size-0"])
def test_bench_bad_numbers_are_usage_errors(capsys, argv, message):
    """bench replaced --repeats 0 by its default, ignored --threads 0 and ran --batch 0 (reporting
    'top-1 agree nan%'): each is an argument error now, before anything runs."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--models", "resnet18", *argv])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m fastconv bench: error: {message}"


def test_bench_in_process_restores_global_state():
    """run() left cudnn.benchmark on (even after a failed run); main(--threads) left the thread count."""
    from fastconv import _bench, __main__ as cli

    before = torch.backends.cudnn.benchmark
    threads = torch.get_num_threads()
    rows = _bench.run(_bench.BenchConfig(models=("resnet18",), size=32, repeats=1, warmup=0, device="cuda"))
    if not torch.cuda.is_available():
        assert "error" in rows[0]
    assert torch.backends.cudnn.benchmark == before
    cli.main(["bench", "--models", "resnet18", "--batch", "1", "--size", "32", "--repeats", "1",
              "--threads", str(1 if threads != 1 else 2)])
    assert torch.get_num_threads() == threads


def test_bench_fails_on_a_wrong_result(monkeypatch, capsys):
    """A converted model computing the wrong function was reported with 'rel. error 2.0e+00' and
    exit status 0: now it is a failure, with the error named."""
    import fastconv

    real = fastconv.convert

    def negated(model, **kwargs):
        converted = real(model, **kwargs)
        converted.register_forward_hook(lambda m, args, out: -out)
        return converted

    monkeypatch.setattr(fastconv, "convert", negated)
    assert main(["bench", "--models", "resnet18", "--batch", "1", "--size", "32", "--repeats", "1"]) == 1
    assert re.search(r"resnet18 batch 1: FAILED: fastconv's relative error 2\.0e\+00 against eager fp32 is above "
                     r"1e-02 for fp32", capsys.readouterr().out)


@pytest.mark.parametrize("argv, message", [
    (["--models", ","], "bench: --models names no model"),
    (["--json", "/nonexistent-folder/out.json"], "bench --json: cannot write '/nonexistent-folder/out.json'"),
    (["--models", "resnet18,alexnet", "--size", "32"], "bench --size: alexnet needs an input of at least 63×63"),
])
def test_bench_refuses_before_running(argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--models", "resnet18", *argv])
    assert str(exc.value.code).startswith(message)


def test_summary_aux_is_googlenet_only(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["summary", "resnet18", "--aux"])
    assert exc.value.code == 2
    assert "argument --aux: only GoogLeNet has auxiliary heads" in capsys.readouterr().err


def test_summary_overflowing_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["summary", "resnet18", "--batch", "100000000000000"])
    assert exc.value.code == 2
    assert "argument --batch/--input: resnet18: a batch of 100000000000000 at 224×224 is too large" in capsys.readouterr().err


def test_summary_into_a_closed_pipe_prints_no_traceback():
    proc = subprocess.run(f"{sys.executable} -m fastconv summary densenet201 | head -1", shell=True, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.startswith("densenet201:")
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_summary_shows_the_notes_parameter_arithmetic(capsys):
    """DESIGN §1: the seed notes' arithmetic, counted on the model (figures worked by hand)."""
    # AlexNet's fc: 9216·4096 + 4096 + 4096·4096 + 4096 + 4096·1000 + 1000
    assert "fully connected layers: 58,631,144 of the 61,100,840 parameters (96%)" in _summary(capsys, "alexnet")
    # VGG-16's stages: 3·64·9 + 64·64·9, 64·128·9 + 128·128·9, 128·256·9 + 2·256·256·9,
    # 256·512·9 + 2·512·512·9, 3·512·512·9 against one 5×5 / 5×5 / 7×7 / 7×7 / 7×7 conv per stage
    assert "the 5 stages hold 14,710,464 conv weights against 21,082,816 (70%)" in _summary(capsys, "vgg16")
    out = _summary(capsys, "googlenet")
    assert "the 18 reduce→3×3 branches of the 9 Inception modules hold" in out
    assert "has 3×3 where the paper's branch 3 has 5×5" in out
    assert "bottlenecks: the 16 blocks' 1×1→3×3→1×1" in _summary(capsys, "resnet50")
    assert "note:" not in _summary(capsys, "resnet18")  # basic blocks: no bottleneck to count
    assert "the 58 layers' 1×1 (to 4k) → 3×3 (to k)" in _summary(capsys, "densenet121")
