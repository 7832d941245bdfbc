"""fp32 linear layers on CPU laid out for what speculation asks of them: a forward over 1 to
9 token rows that costs little more than a forward over one.

PyTorch's default CPU matmul (MKL, dense weights) scores k rows at close to k times the cost
of one beyond 3 rows, which leaves long drafts nothing to win. oneDNN with the weights
reordered once into its blocked layout reads each weight once per forward for the whole
batch, but costs more than MKL on a fresh dense copy for 1 to 3 rows. So each layer keeps
both layouts and uses the dense one for 1 to 3 rows and long prefills: twice the weight
memory (12.4 GB of anonymous memory for the 1.5B target in fp32, against 6.2 GB packed only).
Measured, two threads, whole default 1.5B target, forward over k rows after 128 tokens:

| layout (Intel Xeon, Sapphire Rapids) | k = 1 | 2 | 3 | 4 | 8 |
|---|---|---|---|---|---|
| packed only | 238 ms | 286 | 295 | 302 | 337 |
| dense, as transformers loads it | 295 | 305 | 315 | | |
| dense, a fresh copy | 209 | 230 | 233 | | |
| dense for 1-3 rows, packed above, as here | 211 | 229 | 237 | 305 | 342 |

On an AMD EPYC, one 8960x1536 layer timed alone (k = 1, 2, 4, 8), packed took 2.9, 8.5, 6.5,
8.0 ms and dense 4.4 (matrix-vector), 3.8, 3.5, 6.1 ms, so one row may be faster packed there;
on the Xeon the same single-layer test called one row a tie while the whole model ran it 13%
faster dense, so only a whole-model timing on the EPYC can settle it. The arithmetic is the
same fp32 dot products in another order: rows of a batched forward agree with one-token
forwards to about 1e-4 in the logits, as with MKL alone.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

# Rows served from the dense weight: a one-token step and verifying a one- or two-token
# draft. From 4 rows on packed wins (the measurements above).
DENSE_ROWS = frozenset({1, 2, 3})
# And long prefills, where MKL's large-matrix kernel overtakes oneDNN's: on the Xeon, a forward
# over 160, 256, 384, 671 rows took 1.47, 2.12, 3.24, 6.4 s packed; 1.47, 2.27, 3.08, 4.9 dense.
DENSE_FROM_ROWS = 320


def packing_available() -> bool:
    """oneDNN is in the CPU builds of PyTorch; the op below is how PyTorch's own compiler
    calls it, so its absence (another build, a future rename) just means no packing."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """``nn.Linear`` with its weight in oneDNN's layout, and optionally also dense for the
    row counts where the machine's BLAS is faster; dense tensors in and out."""

    def __init__(self, linear: nn.Linear, dense_rows: Collection[int] = DENSE_ROWS) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed = linear.weight.detach().to_mkldnn()  # [out, in], oneDNN layout
        self.bias = None if linear.bias is None else linear.bias.detach().clone()  # [out]
        self.dense_rows = frozenset(dense_rows)
        # A fresh copy: transformers maps weights from the safetensors file at offsets that
        # are not even 64-byte aligned, and they read 30% slower than a new allocation.
        self.dense = linear.weight.detach().clone() if self.dense_rows else None  # [out, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        if rows in self.dense_rows or (self.dense is not None and rows >= DENSE_FROM_ROWS):
            y = nn.functional.linear(flat, self.dense, self.bias)
        else:
            y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module, dense_rows: Collection[int] = DENSE_ROWS) -> int:
    """Replace every fp32 CPU ``nn.Linear`` in ``model`` by a PackedLinear; returns how many.

    A tied output layer gets its own packed and dense copies (the embedding keeps the
    original), so it costs twice vocab x hidden floats and leaves the embedding lookup as it is.
    """
    if not packing_available():
        return 0
    packed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _packable(child):
                setattr(parent, name, PackedLinear(child, dense_rows))
                packed += 1
    return packed


def _packable(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Linear)
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
    )
