"""The Drafter protocol: propose tokens for the target to check.

Like Hugging Face's CandidateGenerator a drafter has two jobs, proposing and learning from
the outcome, but the draft length is not its business: it fills the Budget a Policy gives.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import ClassVar, Protocol, Self, runtime_checkable

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.errors import ConfigError
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
    def create(
        cls, target: Backend, draft: Backend | None, options: DrafterOptions = DEFAULT_OPTIONS
    ) -> Drafter:
        """Build for this target; raise a ModelError if the pair cannot work."""
        ...

    def open(self, state: DecodeState) -> Drafter:
        """This drafter for one request, started: its own per-request state (a draft
        model's cache slot, the last draft's nodes), sharing by reference what it learns
        across requests (Token Recycling's and ADED's tables, the draft model's weights)."""
        ...

    def start(self, state: DecodeState) -> None:
        """A new request begins on this object (the prompt is ``state.tokens``); rebinds,
        never clears in place, what belongs to one request: ``open`` relies on it."""
        ...

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        """At most ``budget.max_tokens`` tokens to follow ``state.tokens``. A drafter that
        samples its tokens decides whether to draw the next one only from what it knew
        before drawing it (the tokens drawn so far, the next row's confidence): it may stop
        as it goes (``budget.enough``), and what it returns is verified whole."""
        ...

    def observe(self, outcome: StepOutcome) -> None: ...


class OpenByCopy:
    """``open`` for a drafter whose per-request fields ``start`` rebinds: a shallow copy
    shares everything else, which is what it learns across requests."""

    def open(self, state: DecodeState) -> Self:
        request = copy.copy(self)
        request.start(state)  # type: ignore[attr-defined]
        return request


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

    def open(self, state: DecodeState) -> DrafterSet:
        """The set for one request: every arm opened."""
        return self._with({name: arm.open(state) for name, arm in self.arms.items()})

    def _with(self, arms: Mapping[str, Drafter]) -> DrafterSet:
        request = copy.copy(self)
        request.arms = dict(arms)
        return request

    def start(self, state: DecodeState) -> None:
        for drafter in self.arms.values():
            drafter.start(state)

    def observe(self, outcome: StepOutcome) -> None:
        for drafter in self.arms.values():
            drafter.observe(outcome)


DRAFTERS: Registry[Drafter] = Registry("drafter")


def missing_draft_model(drafter: str) -> ConfigError:
    """The one message for a drafter asked for without the draft model it needs."""
    return ConfigError(f"drafter {drafter!r} needs a draft model: pass --draft NAME_OR_PATH")
