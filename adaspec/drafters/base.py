"""The Drafter protocol: propose tokens for the target to check.

Like Hugging Face's CandidateGenerator a drafter has two jobs, proposing and learning from
the outcome, but the draft length is not its business: it fills the Budget a Policy gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import torch

from adaspec.backends.base import Backend
from adaspec.policies.base import Budget
from adaspec.registry import Registry
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome


@dataclass(frozen=True)
class Draft:
    tokens: list[int] = field(default_factory=list)  # [k]
    probs: torch.Tensor | None = None  # [k, vocab] q rows tokens were drawn from; None = one-hot
    confidences: list[float] = field(default_factory=list)  # [k] drafter's P(accepted) estimate
    source: str = ""  # the drafter that proposed it, so policies can learn per drafter

    def prefix(self, n: int) -> Draft:
        """The first n tokens (a policy may verify less than was drafted)."""
        if n >= len(self.tokens):
            return self
        probs = self.probs[:n] if self.probs is not None else None
        return Draft(self.tokens[:n], probs, self.confidences[:n], self.source)


@runtime_checkable
class Drafter(Protocol):
    needs_draft_model: ClassVar[bool]  # cannot draft without a draft model
    uses_draft_model: ClassVar[bool]  # drafts with one when given (so do those that need one)

    @classmethod
    def create(cls, target: Backend, draft: Backend | None) -> Drafter:
        """Build for this target; raise a ModelError if the pair cannot work."""
        ...

    def start(self, state: DecodeState) -> None:
        """A new request begins (the prompt is ``state.tokens``)."""
        ...

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        """At most ``budget.max_tokens`` tokens to follow ``state.tokens``."""
        ...

    def observe(self, outcome: StepOutcome) -> None: ...


DRAFTERS: Registry[Drafter] = Registry("drafter")
