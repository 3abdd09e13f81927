"""``python -m fastconv summary MODEL``: per-layer output shape, parameters, MACs/FLOPs, bytes moved,
arithmetic intensity and (with ``--gpu``) a roofline time per layer.

The model is traced with forward hooks on the meta device, so no memory is allocated and even
VGG-16 summarizes instantly. The layers are torchvision's; fastconv.models builds the same
tree with the same names (its state dicts load with strict=True), so the table is the same.

Conventions (those of torchvision's ``weights.meta["_ops"]``, which the totals reproduce):
one multiply-add = one MAC = two FLOPs; only convolutions and linear layers count (bias adds,
BatchNorm, ReLU and pooling are not counted). Bytes moved per layer are input + weights +
output at ``--dtype``, each read or written once: the traffic of an ideal unfused kernel.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from . import _devices
from ._summary_design import design_notes
from ._table import fmt_count, fmt_si, render_table

MODELS = ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
          "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
          "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
          "densenet121", "densenet161", "densenet169", "densenet201")


@dataclass
class LayerStat:
    name: str
    type: str
    out_shape: tuple
    params: int                # parameters of the module (counted at its first call only)
    macs: int
    bytes: int
    arith: str = ""            # the parameter count as a product, e.g. 3·3·128·64 + 64

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0


@dataclass
class Summary:
    model: str
    input_shape: tuple
    dtype: str
    layers: List[LayerStat]
    total_params: int
    aux: bool
    notes: List[str] = field(default_factory=list)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def total_bytes(self) -> int:
        return sum(layer.bytes for layer in self.layers)


class InputSizeError(ValueError):
    """The model cannot run at this input size or batch (``python -m fastconv summary`` reports it
    as a bad argument, not a traceback)."""

    def __init__(self, message: str, arg: str = "--input") -> None:
        super().__init__(message)
        self.arg = arg


def build_model(name: str, aux: bool = False, device: str = "meta") -> nn.Module:
    try:
        import torchvision.models as zoo
    except ImportError:  # fastconv.models builds the same layer tree with the same names
        from . import models as zoo

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    kwargs = {}
    if name == "googlenet":
        kwargs = {"aux_logits": aux, "init_weights": True}
    with torch.device(device):
        return getattr(zoo, name)(**kwargs)


def _param_arith(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        s = f"{kh}·{kw}·{m.in_channels // m.groups}·{m.out_channels}"
        return s + (f" + {m.out_channels}" if m.bias is not None else "")
    if isinstance(m, nn.Linear):
        return f"{m.in_features}·{m.out_features}" + (f" + {m.out_features}" if m.bias is not None else "")
    if isinstance(m, nn.BatchNorm2d) and m.affine:
        return f"2·{m.num_features}"
    return ""


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return out.numel() * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features
    return 0


def _tensors(x) -> List[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors(item)]
    return []


def _runs(model: nn.Module, batch: int, input_size: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.empty(batch, 3, input_size, input_size, device="meta"))
    except (RuntimeError, ValueError):
        return False
    return True


def _smallest_input(model: nn.Module, batch: int, too_small: int, limit: int = 1 << 14) -> Optional[int]:
    """The smallest square input ``model`` runs at, above ``too_small`` (which failed), or None if
    none up to ``limit`` does (then the failure was not the size). Each conv and pool's output size
    is non-decreasing in its input size, so the sizes that run are all those from some minimum on:
    doubling then bisection, a dozen meta traces of a few ms each."""
    lo, hi = max(too_small, 0), max(2 * too_small, 8)
    while not _runs(model, batch, hi):
        if hi >= limit:
            return None
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # lo fails, hi runs
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _runs(model, batch, mid) else (mid, hi)
    return hi


def summarize(name: str, input_size: int = 224, batch: int = 1, dtype: str = "fp32", aux: bool = False) -> Summary:
    """Trace ``name`` on the meta device and return per-layer statistics. Raises InputSizeError
    when the model cannot run at ``input_size`` (saying the smallest size it can) or ``batch`` < 1."""
    if batch < 1:
        raise InputSizeError(f"the batch must be at least 1, got {batch}")
    itemsize = torch.empty((), dtype=_devices.DTYPES[dtype]).element_size()
    model = build_model(name, aux=aux)
    # GoogLeNet's auxiliary heads run only in training mode; with aux they are traced that way
    # (BatchNorm's mode changes no shape or count).
    model.train(aux and name == "googlenet")
    # ... but BatchNorm in eval mode all the same: in training mode it needs more than one value
    # per channel, which batch 1 at a small --input does not give (GoogLeNet's inception5 maps are
    # 1×1 at --input 32), and the running statistics it would use instead change nothing traced.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    layers: List[LayerStat] = []
    seen = set()

    def hook(module, inputs, output, _name):
        outs = _tensors(output)
        if not outs:
            return
        first = id(module) not in seen
        seen.add(id(module))
        params = sum(p.numel() for p in module.parameters(recurse=False)) if first else 0
        weight_elems = sum(p.numel() for p in module.parameters(recurse=False))
        weight_elems += sum(b.numel() for b in module.buffers(recurse=False) if b.dim() > 0)
        moved = (sum(t.numel() for t in _tensors(inputs)) + weight_elems + sum(t.numel() for t in outs)) * itemsize
        layers.append(LayerStat(_name + ("" if first else " (again)"), type(module).__name__, tuple(outs[0].shape),
                                params, _macs(module, outs[0]), moved, _param_arith(module) if first else ""))

    handles = [m.register_forward_hook(lambda mod, i, o, _n=n: hook(mod, i, o, _n))
               for n, m in model.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.empty(batch, 3, input_size, input_size, device="meta"))
    except (RuntimeError, ValueError) as exc:
        for h in handles:  # the search below traces again, without recording layers
            h.remove()
        if "overflow" in str(exc):  # more elements than a tensor's size can count
            raise InputSizeError(f"{name}: a batch of {batch} at {input_size}×{input_size} is too large "
                                 f"(the tensor sizes overflow)", arg="--batch/--input") from None
        smallest = _smallest_input(model, batch, input_size)
        if smallest is None:
            raise
        if input_size < 1:
            raise InputSizeError(f"the input size must be positive, got {input_size}"
                                 f" ({name} needs at least {smallest}×{smallest})") from exc
        raise InputSizeError(f"{name} needs an input of at least {smallest}×{smallest}, got {input_size}×{input_size}"
                             f" (its feature maps shrink to nothing before the last layer)") from exc
    finally:
        for h in handles:
            h.remove()
    notes = design_notes(name, model)
    if name == "googlenet":
        notes.append("auxiliary heads included (--aux; traced in training mode)" if aux
                     else "auxiliary heads excluded (inference; --aux to include them)")
    return Summary(name, (batch, 3, input_size, input_size), dtype, layers,
                   sum(p.numel() for p in model.parameters()), aux, notes)


def _peak_key(dtype: str) -> str:
    return {"fp64": "fp32"}.get(dtype, dtype)


def render(summary: Summary, gpu: Optional[str] = None) -> str:
    spec = _devices.gpu_spec(gpu) if gpu else None
    peak = spec.peak[_peak_key(summary.dtype)] if spec else None
    headers = ["layer", "type", "output", "params", "weights as a product", "FLOPs", "bytes", "FLOP/B"]
    if spec:
        headers += ["roofline µs", "bound"]
    rows = []
    total_time = 0.0
    for layer in summary.layers:
        row = [layer.name, layer.type, "×".join(map(str, layer.out_shape)), fmt_count(layer.params) if layer.params else "",
               layer.arith, fmt_si(layer.flops) if layer.flops else "", fmt_si(layer.bytes, "B"),
               f"{layer.intensity:.1f}" if layer.flops else ""]
        if spec:
            t_compute, t_memory = layer.flops / peak, layer.bytes / spec.bandwidth
            total_time += max(t_compute, t_memory)
            row += [f"{max(t_compute, t_memory) * 1e6:.2f}", "compute" if t_compute > t_memory else "memory"]
        rows.append(row)
    macs = summary.total_macs
    lines = [f"{summary.model}: input {'×'.join(map(str, summary.input_shape))}, {summary.dtype}"
             " (torchvision's layers; fastconv.models has the same tree and names)", "",
             render_table(headers, rows), "",
             f"total: {summary.total_params:,} parameters ({summary.total_params / 1e6:.2f} M)",
             f"total: {macs:,} MACs = {macs / 1e9:.2f} GMACs / {2 * macs / 1e9:.2f} GFLOPs"
             f" (batch {summary.input_shape[0]}; convs and linears; 1 MAC = 2 FLOPs)",
             f"total: {fmt_si(summary.total_bytes, 'B')} moved layer by layer at {summary.dtype}"
             f" (input + weights + output of each layer); {2 * macs / summary.total_bytes:.1f} FLOP/B overall"]
    if spec:
        lines.append(f"roofline on {spec.name}: peak {peak / 1e12:.1f} TFLOP/s ({_peak_key(summary.dtype)} dense"
                     f"{', CUDA cores' if _peak_key(summary.dtype) == 'fp32' else ', tensor cores'}), "
                     f"{spec.bandwidth / 1e12:.2f} TB/s: {total_time * 1e3:.3f} ms if every layer ran at its bound")
    lines += [f"note: {n}" for n in summary.notes]
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # argparse would name this function in its message; say what type=int said
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(p) -> None:
    p.add_argument("model", choices=MODELS, metavar="MODEL", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--input", type=int, default=224, help="image size (default 224)")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "tf32", "fp16", "bf16"],
                   help="element size for bytes moved, and the peak used for --gpu (default fp32)")
    p.add_argument("--gpu", default=None, help=f"roofline per layer on this card: {', '.join(sorted(_devices.GPUS))}")
    p.add_argument("--aux", action="store_true", help="GoogLeNet: include the auxiliary classifier heads")


def prog() -> str:
    """How the user called the command line: the ``fastconv`` console script or ``python -m fastconv``."""
    return "fastconv" if os.path.basename(sys.argv[0] or "") == "fastconv" else "python -m fastconv"


def main(args) -> int:
    if args.aux and args.model != "googlenet":
        print(f"{prog()} summary: error: argument --aux: only GoogLeNet has auxiliary heads, not {args.model}",
              file=sys.stderr)
        raise SystemExit(2)
    if args.gpu:
        try:
            _devices.gpu_spec(args.gpu)
        except KeyError as exc:
            raise SystemExit(f"summary: {exc.args[0]}")
    try:
        summary = summarize(args.model, args.input, args.batch, args.dtype, args.aux)
    except InputSizeError as exc:
        # a bad argument, reported as argparse reports one: a line on stderr and exit status 2
        # (the input size that is too small depends on the model, so argparse cannot check it)
        print(f"{prog()} summary: error: argument {exc.arg}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(render(summary, args.gpu))
    return 0
