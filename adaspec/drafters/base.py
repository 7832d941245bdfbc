"""The Drafter protocol: propose tokens for the target to check.

Like Hugging Face's CandidateGenerator a drafter has two jobs, proposing and learning from
the outcome, but the draft length is not its business: it fills the Budget a Policy gives.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.registry import Registry
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome


@runtime_checkable
class Drafter(Protocol):
    name: ClassVar[str]  # its registry name (set by DRAFTERS.register)
    needs_draft_model: ClassVar[bool]  # cannot draft without a draft model
    uses_draft_model: ClassVar[bool]  # drafts with one when given (so do those that need one)
    row_top_k: int  # how many of each verified row's likeliest tokens it learns from (0: none)

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
