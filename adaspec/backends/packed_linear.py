"""fp32 linear layers on CPU laid out for what speculation asks of them: a forward over 1 to
9 token rows that costs little more than a forward over one.

PyTorch's default CPU matmul (MKL, dense weights) can score k rows at close to k times the
cost of one, which leaves drafts nothing to win. oneDNN with the weights reordered once into
its blocked layout reads each weight once per forward for the whole batch. Which of the two
is faster for one to three rows, and for long prefills, depends on the CPU (measurements:
docs/exactness.md). So a ``Layout`` says which row counts each layer serves from which copy,
and only the copies it uses are kept (both: twice the weight memory).
``adaspec.backends.layout_timing`` chooses it per machine. The arithmetic is the same fp32
dot products in another order: rows of a batched forward agree with one-token forwards to
about 1e-4 in the logits, as with MKL alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# From this many rows on a forward is a prefill, whose best layout is timed on its own.
PREFILL_ROWS = 320


@dataclass(frozen=True)
class Layout:
    """Which weight copy serves a forward over how many rows: dense (MKL) for the counts in
    ``dense_rows`` and for every count from ``dense_from`` on (None: never), else packed."""

    dense_rows: frozenset[int] = frozenset()
    dense_from: int | None = None

    def dense_for(self, rows: int) -> bool:
        return rows in self.dense_rows or (self.dense_from is not None and rows >= self.dense_from)

    @property
    def uses_dense(self) -> bool:
        return bool(self.dense_rows) or self.dense_from is not None

    @property
    def uses_packed(self) -> bool:
        return self.dense_from != 1


PACKED = Layout()
DENSE = Layout(dense_from=1)
# Where nothing was timed: what an Intel Xeon (Sapphire Rapids) favours; it keeps both copies.
XEON = Layout(frozenset({1, 2, 3}), PREFILL_ROWS)


def packing_available() -> bool:
    """oneDNN is in the CPU builds of PyTorch; the op below is how PyTorch's own compiler
    calls it, so its absence (another build, a future rename) just means no packing."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """``nn.Linear`` with its weight in oneDNN's layout, dense, or both, as the layout uses
    them; dense tensors in and out."""

    def __init__(self, linear: nn.Linear, layout: Layout = XEON) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.bias = None if linear.bias is None else linear.bias.detach().clone()  # [out]
        weight = linear.weight.detach()  # [out, in]
        self.packed = weight.to_mkldnn() if layout.uses_packed else None  # oneDNN layout
        # A fresh copy: transformers maps weights from the safetensors file at unaligned
        # offsets, which read slower than a new allocation (docs/exactness.md).
        self.dense = weight.clone() if layout.uses_dense else None
        self.layout = layout

    def use(self, layout: Layout, free: bool = True) -> None:
        """Serve by this layout from now on and, if ``free``, drop a copy it does not use
        (timing the layouts keeps both)."""
        if (layout.uses_dense and self.dense is None) or (
            layout.uses_packed and self.packed is None
        ):
            raise ValueError("this layer no longer holds a copy that layout uses")
        self.layout = layout
        if free and not layout.uses_dense:
            self.dense = None
        if free and not layout.uses_packed:
            self.packed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        flat = x.reshape(-1, self.in_features)
        if self.layout.dense_for(flat.shape[0]):
            y = nn.functional.linear(flat, self.dense, self.bias)
        else:
            y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module, layout: Layout = XEON) -> list[PackedLinear]:
    """Replace every fp32 CPU ``nn.Linear`` in ``model`` by a PackedLinear; returns them.

    A tied output layer gets its own copies (the embedding keeps the original), so it costs
    vocab x hidden floats more per copy and leaves the embedding lookup as it is.
    """
    if not packing_available():
        return []
    packed = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _packable(child):
                layer = PackedLinear(child, layout)
                setattr(parent, name, layer)
                packed.append(layer)
    return packed


def use_layout(layers: list[PackedLinear], layout: Layout, free: bool = True) -> None:
    for layer in layers:
        layer.use(layout, free)


def _packable(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Linear)
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
    )
