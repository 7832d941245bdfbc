"""oneDNN-packed linear layers for fp32 models on CPU: what makes verification cheap there.

PyTorch's default CPU matmul (MKL) scores k tokens at close to k times the cost of one on
small batches (measured on the default 1.5B target, two AMD EPYC cores: k = 1, 4, 8 cost
626, 2332, 2832 ms), which leaves speculation nothing to win. oneDNN with the weights
reordered once into its blocked layout reads each weight once per forward for the whole
batch (599, 994, 1470 ms), so a verification of several drafted tokens costs well under
that many one-token steps. The arithmetic is the same fp32 dot products in another order:
rows of a batched forward agree with one-token forwards to about 3e-5 in the logits, as
with MKL.
"""

from __future__ import annotations

import torch
from torch import nn


def packing_available() -> bool:
    """oneDNN is in the CPU builds of PyTorch; the op below is how PyTorch's own compiler
    calls it, so its absence (another build, a future rename) just means no packing."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """``nn.Linear`` with its weight held in oneDNN's layout; dense tensors in and out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed = linear.weight.detach().to_mkldnn()  # [out, in], oneDNN layout
        self.bias = None if linear.bias is None else linear.bias.detach().clone()  # [out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        flat = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module) -> int:
    """Replace every fp32 CPU ``nn.Linear`` in ``model`` by a PackedLinear; returns how many.

    A tied output layer gets its own packed copy (the embedding keeps the original), which
    costs vocab x hidden floats of memory and keeps the embedding lookup untouched.
    """
    if not packing_available():
        return 0
    packed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _packable(child):
                setattr(parent, name, PackedLinear(child))
                packed += 1
    return packed


def _packable(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Linear)
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
    )
