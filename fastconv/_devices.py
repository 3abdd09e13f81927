"""What a benchmark report needs to name its machine: device name, versions, and the peak
FLOP/s and bandwidth of common GPUs (for rooflines and "fraction of peak" columns).

Peaks are the vendors' dense (no 2:4 sparsity) datasheet figures; they are upper bounds that
no kernel reaches, used only to put a measured number in proportion.
"""
from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from typing import Dict, Optional

import torch


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bandwidth: float              # bytes/s, HBM/GDDR
    peak: Dict[str, float]        # FLOP/s by precision: "fp32" (CUDA cores), "tf32", "bf16", "fp16"


_T = 1e12
_HOPPER = {"fp32": 67 * _T, "tf32": 494.7 * _T, "bf16": 989.4 * _T, "fp16": 989.4 * _T}
_HOPPER_NVL = {"fp32": 60 * _T, "tf32": 417.5 * _T, "bf16": 835.5 * _T, "fp16": 835.5 * _T}
_A100 = {"fp32": 19.5 * _T, "tf32": 156 * _T, "bf16": 312 * _T, "fp16": 312 * _T}
GPUS: Dict[str, GPUSpec] = {
    "h100": GPUSpec("H100 SXM", 3.35e12, _HOPPER),
    "h100-pcie": GPUSpec("H100 PCIe", 2.0e12, {"fp32": 51 * _T, "tf32": 378 * _T, "bf16": 756 * _T, "fp16": 756 * _T}),
    "h100-nvl": GPUSpec("H100 NVL", 3.9e12, _HOPPER_NVL),
    "h200": GPUSpec("H200 SXM", 4.8e12, _HOPPER),
    "h200-nvl": GPUSpec("H200 NVL", 4.8e12, _HOPPER_NVL),
    "a100": GPUSpec("A100 SXM 80GB", 2.039e12, _A100),
    "a100-pcie": GPUSpec("A100 PCIe 80GB", 1.935e12, _A100),
    "a100-40gb": GPUSpec("A100 40GB", 1.555e12, _A100),  # SXM4 and PCIe alike
    "l4": GPUSpec("L4", 0.3e12, {"fp32": 30.3 * _T, "tf32": 60 * _T, "bf16": 121 * _T, "fp16": 121 * _T}),
    "l40": GPUSpec("L40", 0.864e12, {"fp32": 90.5 * _T, "tf32": 90.5 * _T, "bf16": 181 * _T, "fp16": 181 * _T}),
    "l40s": GPUSpec("L40S", 0.864e12, {"fp32": 91.6 * _T, "tf32": 183 * _T, "bf16": 362 * _T, "fp16": 362 * _T}),
}

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "fp64": torch.float64}


def gpu_spec(name: str) -> GPUSpec:
    """The spec for a short name (``h100``, ``a100-40gb``) or a device name as torch reports it
    (``NVIDIA A100-SXM4-40GB``). Names are matched by whole words, never by substring: an L40 is
    not an L4, a GH200 is none of these, and a card not listed is an error, not a guess."""
    key = name.strip().lower()
    if key in GPUS:
        return GPUS[key]
    words = set(re.split(r"[^a-z0-9]+", key)) - {"", "nvidia", "tesla"}
    if "mig" in words:  # "NVIDIA A100-SXM4-40GB MIG 1g.5gb": a slice with a fraction of the card's peaks
        raise KeyError(f"unknown GPU {name!r}: a MIG instance, whose peaks are a fraction of the whole card's")
    variant = None
    if "h200" in words:
        variant = "h200-nvl" if "nvl" in words else "h200"
    elif "h100" in words:
        variant = "h100-pcie" if "pcie" in words else "h100-nvl" if "nvl" in words else "h100"
    elif "a100" in words:
        variant = "a100-40gb" if "40gb" in words else "a100-pcie" if "pcie" in words else "a100"
    else:
        variant = next((w for w in ("l40s", "l40", "l4") if w in words), None)
    if variant is None:
        raise KeyError(f"unknown GPU {name!r}; known: {', '.join(sorted(GPUS))}")
    return GPUS[variant]


def current_gpu_spec() -> Optional[GPUSpec]:
    if not torch.cuda.is_available():
        return None
    try:
        return gpu_spec(torch.cuda.get_device_name())
    except KeyError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {cpu} ({torch.get_num_threads()} threads)"


def versions() -> Dict[str, str]:
    import fastconv

    out = {"python": platform.python_version(), "torch": torch.__version__, "fastconv": fastconv.__version__}
    for mod in ("triton", "torchvision"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as exc:  # optional
            out[mod] = f"unavailable ({type(exc).__name__})"
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out
