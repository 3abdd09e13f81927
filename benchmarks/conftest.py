"""pytest-benchmark suites (``pytest benchmarks``): fastconv's providers against PyTorch per op
and per model, at the five networks' shapes (benchmarks/shapes.py).

Knobs are environment variables, not command-line options, so they work however pytest is
started (``pytest_addoption`` only works in a root conftest):
  FASTCONV_BENCH_SHAPES = all | sample   (default: all on a GPU, a few per network on the CPU)
  FASTCONV_BENCH_DTYPE  = fp32 | tf32 | fp16 | bf16   (default: bf16 channels_last on a GPU, fp32 on the CPU)
  FASTCONV_BENCH_BATCH  = batch size of the op suites (default: 32 on a GPU, 2 on the CPU)
  FASTCONV_BENCH_FULL_SIZE = 1   CPU: keep the real channel counts and sizes (default: scaled down)
"""
# The colleagues' benchmarks/bench_cpu_*.py are standalone scripts, not pytest suites: their names
# match python_files = bench_*.py, so keep pytest from importing them.
collect_ignore_glob = ["bench_cpu_*.py"]
