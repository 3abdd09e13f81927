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

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from . import _devices
from ._table import fmt_count, fmt_si, render_table

MODELS = ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
          "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
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


def summarize(name: str, input_size: int = 224, batch: int = 1, dtype: str = "fp32", aux: bool = False) -> Summary:
    """Trace ``name`` on the meta device and return per-layer statistics."""
    itemsize = torch.empty((), dtype=_devices.DTYPES[dtype]).element_size()
    model = build_model(name, aux=aux)
    # GoogLeNet's auxiliary heads run only in training mode; with aux they are traced that way
    # (BatchNorm's mode changes no shape or count).
    model.train(aux and name == "googlenet")
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
    finally:
        for h in handles:
            h.remove()
    notes = []
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


def add_arguments(p) -> None:
    p.add_argument("model", choices=MODELS, metavar="MODEL", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--input", type=int, default=224, help="image size (default 224)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "tf32", "fp16", "bf16"],
                   help="element size for bytes moved, and the peak used for --gpu (default fp32)")
    p.add_argument("--gpu", default=None, help=f"roofline per layer on this card: {', '.join(sorted(_devices.GPUS))}")
    p.add_argument("--aux", action="store_true", help="GoogLeNet: include the auxiliary classifier heads")


def main(args) -> int:
    if args.gpu:
        try:
            _devices.gpu_spec(args.gpu)
        except KeyError as exc:
            raise SystemExit(f"summary: {exc.args[0]}")
    print(render(summarize(args.model, args.input, args.batch, args.dtype, args.aux), args.gpu))
    return 0
