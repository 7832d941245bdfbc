"""The Drafter protocol: propose tokens for the target to check.

Like Hugging Face's CandidateGenerator a drafter has two jobs, proposing and learning from
the outcome, but the draft length is not its business: it fills the Budget a Policy gives.
"""

from __future__ import annotations

from collections.abc import Mapping
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


class DrafterSet:
    """The drafters a policy chooses among each step (auto's arms, or one drafter alone),
    cheapest to propose first: started together, and each learns from every outcome."""

    def __init__(self, arms: Mapping[str, Drafter], shares: Mapping[str, float] | None = None):
        self.arms = dict(arms)
        # Per arm, a drafted token's cost as a share of a one-token target forward, guessed
        # before it is timed (a draft model: its weights over the target's).
        self.shares = {name: (shares or {}).get(name, 0.0) for name in self.arms}
        self.row_top_k = max((arm.row_top_k for arm in self.arms.values()), default=0)

    @classmethod
    def of(cls, drafter: Drafter | DrafterSet) -> DrafterSet:
        return drafter if isinstance(drafter, DrafterSet) else cls({drafter.name: drafter})

    def start(self, state: DecodeState) -> None:
        for drafter in self.arms.values():
            drafter.start(state)

    def observe(self, outcome: StepOutcome) -> None:
        for drafter in self.arms.values():
            drafter.observe(outcome)


DRAFTERS: Registry[Drafter] = Registry("drafter")
