"""Triton kernels of the ``triton`` backend, one module per op.

Each module exposes a launcher with the backend-kernel contract of its op (writes ``out`` in
place) and ``compile_specs()``, which ``compile_check`` uses to compile every config for real
GPU targets without a GPU (DESIGN §6.3). Modules are imported lazily: Triton is optional.
"""

import os as _os


def pick_interpreter_config(configs):
    """The one config an interpreted run uses (DESIGN §6.1: the autotuner is bypassed under
    TRITON_INTERPRET=1): ``configs[$FASTCONV_TRITON_CONFIG]``, default 0, so tests pick each."""
    raw = _os.environ.get("FASTCONV_TRITON_CONFIG", "0")
    try:
        index = int(raw)
    except ValueError:
        index = -1
    if not 0 <= index < len(configs):  # (a negative index would quietly pick from the end)
        raise ValueError(f"FASTCONV_TRITON_CONFIG={raw!r}: expected an index into the {len(configs)} configs "
                         f"(0 to {len(configs) - 1})")
    return configs[index]


def cudnn_conv_tf32() -> bool:
    """Whether float32 convs may run as TF32, as PyTorch's cuDNN convs decide it: the conv setting
    ``torch.backends.cudnn.conv.fp32_precision`` where torch has it ("tf32" / "ieee"; "none" defers
    to the legacy ``torch.backends.cudnn.allow_tf32``, whose read raises once the per-op settings
    differ: then IEEE float32)."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    precision = getattr(conv, "fp32_precision", "none") if conv is not None else "none"
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return False
