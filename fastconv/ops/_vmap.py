"""torch.func.vmap rules for the functional ops. Without them PyTorch runs a custom op once per
example (its "performance drop" fallback). An NCHW op's images are independent along N, so a
vmapped input is folded into the batch: ``[B, N, ...]`` runs as one call on ``[B*N, ...]``.
Where a per-channel argument (weight, bias, BN scale/shift) is vmapped too, each example has its
own filter and the rule runs the op once per example, as the fallback would."""
from __future__ import annotations

from typing import Sequence

import torch


def _take(arg, dim, i):
    return arg.select(dim, i) if isinstance(arg, torch.Tensor) and isinstance(dim, int) else arg


def fold(arg: torch.Tensor, dim, size: int):
    """A vmapped [N, C, H, W]-per-example tensor (vmapped at ``dim``, or None: the same for every
    example) as one [size * N, C, H, W] batch, and N."""
    arg = arg.expand(size, *arg.shape) if dim is None else arg.movedim(dim, 0)
    return arg.reshape(size * arg.shape[1], *arg.shape[2:]), arg.shape[1]


def unfold(out: torch.Tensor, size: int, n: int):
    """The op's [size * N, ...] result back as ``size`` examples (vmap's output, batched at 0)."""
    return out.reshape(size, n, *out.shape[1:]), 0  # (not -1: an empty batch is ambiguous)


def register_batch_folding(op_name: str, per_image: Sequence[int], per_channel: Sequence[int]) -> None:
    """A vmap rule for the functional op ``fastconv::<op_name>``: the arguments at positions
    ``per_image`` (the input and the residual: [N, C, H, W] tensors) are folded into the batch
    when every argument at ``per_channel`` is unbatched."""
    op = getattr(torch.ops.fastconv, op_name).default

    def rule(info, in_dims, *args):
        size = info.batch_size
        # per example: a vmapped per-channel argument, or a per-image argument that is not one
        # [N, C, H, W] tensor per example (the op's own check then names the shape the user passed)
        if any(isinstance(in_dims[i], int) for i in per_channel) or any(
                args[i] is not None and args[i].dim() - isinstance(in_dims[i], int) != 4 for i in per_image):
            results = [op(*(_take(a, d, i) for a, d in zip(args, in_dims))) for i in range(size)]
            return torch.stack(results), 0
        folded, n = list(args), 0
        for i in per_image:
            if args[i] is not None:
                folded[i], n = fold(args[i], in_dims[i], size)
        return unfold(op(*folded), size, n)

    torch.library.register_vmap(f"fastconv::{op_name}", rule)
