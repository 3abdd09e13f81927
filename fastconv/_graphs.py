"""CUDA-graph capture of a converted model's eval forward (``convert(..., cuda_graph=True)``)."""
from __future__ import annotations

from typing import Any, Callable, Tuple

import torch
import torch.nn as nn

from . import _autotune


def capture(run: Callable[[], Any], device: torch.device, warmup: int = 1) -> Tuple[torch.cuda.CUDAGraph, Any]:
    """``run()`` captured in a new CUDA graph, after ``warmup`` calls on a side stream (lazy
    initialization, tuning and autotuning happen there, never inside the capture). Returns the
    graph and what the captured call returned (its tensors are the graph's static outputs)."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = run()
    return graph, result


class CUDAGraphModel(nn.Module):
    """Replays one captured CUDA graph of ``model``'s eval forward for inputs like ``example_input``.

    A call with an input of the captured shape, dtype, strides and device copies it into a static
    input buffer, replays the graph and returns the **static output tensor: the next call overwrites
    it** (``clone()`` it to keep it, or build with ``clone_output=True``). An input of any other
    shape/dtype/layout/device runs the eager converted forward (``fallback="eager"``, the default)
    or raises ``ValueError`` (``fallback="raise"``).

    Before capture the model runs under ``auto``: every op signature is tuned (tactic timing,
    Triton autotuning, lazy initialization) and then warmed up on a side stream, so the capture
    itself records kernel launches only: no timing, synchronization or tuning happens in it.

    ``tune_by``: what the tactic timing measures. ``"wall"`` (default): host and GPU time of an
    eager call, the same choices eager calls use. ``"gpu"``: GPU time alone (each candidate
    captured in a CUDA graph and replayed, ``_autotune.gpu_time_timer``), which is what a replay
    costs; its choices are cached apart from eager ones. On the 2026-11-28 H200 run fastconv's 1×1
    kernels were 1.1–2.2× cuDNN in GPU time but lost in eager timing to their launch cost, so
    ``"gpu"`` should pick them for graphs; it has not run on a GPU yet, hence not the default.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, warmup: int = 2,
                 fallback: str = "eager", clone_output: bool = False, progress: bool = True,
                 tune_by: str = "wall") -> None:
        super().__init__()
        if not torch.cuda.is_available():
            raise RuntimeError("fastconv.convert(cuda_graph=True): CUDA graphs need a CUDA device, and none is "
                               "available (torch.cuda.is_available() is False)")
        if not isinstance(example_input, torch.Tensor) or example_input.device.type != "cuda":
            where = example_input.device if isinstance(example_input, torch.Tensor) else type(example_input).__name__
            raise RuntimeError(f"fastconv.convert(cuda_graph=True): example_input must be a CUDA tensor, got {where}")
        if fallback not in ("eager", "raise"):
            raise ValueError(f"fastconv.convert: fallback must be 'eager' or 'raise', got {fallback!r}")
        if tune_by not in ("wall", "gpu"):
            raise ValueError(f"fastconv.convert: tune_by must be 'wall' or 'gpu', got {tune_by!r}")
        self.model = model
        self.fallback, self.clone_output, self.tune_by = fallback, clone_output, tune_by
        static = torch.empty_strided(example_input.shape, example_input.stride(), dtype=example_input.dtype,
                                     device=example_input.device)
        static.copy_(example_input)
        self.static_input = static
        self._key = self._input_key(static)
        with torch.inference_mode(), _autotune.timing_mode(tune_by):  # capture looks choices up in it too
            _autotune.tune(model, static, progress=progress)  # tactic timing: before capture
            self.graph, self.static_output = capture(lambda: model(static), static.device, warmup)
        torch.cuda.synchronize(static.device)

    @staticmethod
    def _input_key(x: torch.Tensor):
        return (tuple(x.shape), tuple(x.stride()), x.dtype, x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and self._input_key(x) == self._key:
            self.static_input.copy_(x)
            self.graph.replay()
            return self.static_output.clone() if self.clone_output else self.static_output
        if self.fallback == "raise":
            got = self._input_key(x) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"fastconv CUDA-graph model: captured for input {self._key[:3]} on {self._key[3]}, got {got}")
        return self.model(x)
