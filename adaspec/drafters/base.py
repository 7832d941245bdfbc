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


@runtime_checkable
class Drafter(Protocol):
    name: ClassVar[str]  # its registry name (set by DRAFTERS.register)
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
        """At most ``budget.max_tokens`` tokens to follow ``state.tokens``. A drafter that
        samples its tokens decides whether to draw the next one only from what it knew
        before drawing it (the tokens drawn so far, the next row's confidence): it may stop
        as it goes (``budget.enough``), and what it returns is verified whole."""
        ...

    def observe(self, outcome: StepOutcome) -> None: ...


DRAFTERS: Registry[Drafter] = Registry("drafter")
