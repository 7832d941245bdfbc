"""What a drafter proposes: a token tree with the distributions its nodes were drawn from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adaspec.tree import TokenTree


@dataclass(frozen=True)
class Draft:
    """Nodes in an order where each parent comes first, best first where the drafter
    knows (a policy verifying fewer keeps a prefix of the nodes, which is a tree)."""

    tokens: list[int] = field(default_factory=list)  # [n]
    probs: torch.Tensor | None = None  # [n, vocab] q rows nodes were drawn from; None = one-hot
    confidences: list[float] = field(default_factory=list)  # [n] P(accepted | parent accepted)
    source: str = ""  # the drafter that proposed it, so policies can learn per drafter
    parents: tuple[int, ...] | None = None  # [n] each node's parent (tree.ROOT); None: a chain

    @property
    def sampled(self) -> bool:
        """Whether the tokens were drawn at random from ``probs`` (a draft model under
        sampling). Such a draft is verified as the drafter stopped it: cutting it afterwards
        by its own tokens would bias the output (docs/design.md, rule 1; docs/methods.md)."""
        return self.probs is not None

    @property
    def tree(self) -> TokenTree:
        return TokenTree.of(self.tokens, self.parents)

    def prefix(self, n: int) -> Draft:
        """The first n nodes (a policy may verify less than was drafted); a tree still,
        since parents come first."""
        if n >= len(self.tokens):
            return self
        probs = self.probs[:n] if self.probs is not None else None
        parents = self.parents[:n] if self.parents is not None else None
        return Draft(self.tokens[:n], probs, self.confidences[:n], self.source, parents)
