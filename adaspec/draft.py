"""What a drafter proposes: tokens with the distributions they were drawn from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Draft:
    tokens: list[int] = field(default_factory=list)  # [k]
    probs: torch.Tensor | None = None  # [k, vocab] q rows tokens were drawn from; None = one-hot
    confidences: list[float] = field(default_factory=list)  # [k] drafter's P(accepted) estimate
    source: str = ""  # the drafter that proposed it, so policies can learn per drafter

    @property
    def sampled(self) -> bool:
        """Whether the tokens were drawn at random from ``probs`` (a draft model under
        sampling). Such a draft is verified as the drafter stopped it: cutting it afterwards
        by its own tokens would bias the output (DESIGN.md rule 1, docs/methods.md)."""
        return self.probs is not None

    def prefix(self, n: int) -> Draft:
        """The first n tokens (a policy may verify less than was drafted)."""
        if n >= len(self.tokens):
            return self
        probs = self.probs[:n] if self.probs is not None else None
        return Draft(self.tokens[:n], probs, self.confidences[:n], self.source)
