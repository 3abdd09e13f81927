"""Triton kernels of the ``triton`` backend, one module per op.

Each module exposes a launcher with the backend-kernel contract of its op (writes ``out`` in
place) and ``compile_specs()``, which ``compile_check`` uses to compile every config for real
GPU targets without a GPU (DESIGN §6.3). Modules are imported lazily: Triton is optional.
"""
