"""The Policy protocol: the budget for the next draft, learned from past steps.

A policy never drafts and a drafter never decides how much to draft: the policy hands the
drafter a Budget, the drafter fills at most that much, and both see the step's outcome.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.errors import ConfigError
from adaspec.registry import Registry
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome


@runtime_checkable
class Policy(Protocol):
    uses_cost_profile: ClassVar[bool]  # plans with what a forward costs on this machine

    @classmethod
    def create(cls, k: int | None, target: Backend) -> Policy:
        """Build for this target; k is the policy's draft-length knob (None: its default)."""
        ...

    def start(self, state: DecodeState) -> None:
        """Forget the previous request."""
        ...

    @classmethod
    def may_ask_draft_model(cls, target: Backend, share: float) -> bool:
        """Whether a draft model whose token costs this share of a target step could ever
        be worth asking here; False: a drafter that merely may use one is built without."""
        ...

    def budget(self, state: DecodeState) -> Budget: ...

    def trim(self, draft: Draft) -> int:
        """How many of the drafted tokens to verify (drafting is done, verifying is not).
        Asked only for a draft that is a function of the committed text (``not
        draft.sampled``): a sampled one is verified as its drafter stopped it."""
        ...

    def observe(self, outcome: StepOutcome) -> None: ...


class PolicyDefaults:
    """The parts most policies leave alone: no target-specific set-up, nothing to forget
    between requests, every drafted token verified, nothing learned."""

    uses_cost_profile: ClassVar[bool] = False

    @classmethod
    def create(cls, k: int | None, target: Backend) -> Policy:
        return cls() if k is None else cls(k=k)  # type: ignore[call-arg]

    @classmethod
    def may_ask_draft_model(cls, target: Backend, share: float) -> bool:
        return True

    def start(self, state: DecodeState) -> None:
        pass

    def trim(self, draft: Draft) -> int:
        return len(draft.tokens)

    def observe(self, outcome: StepOutcome) -> None:
        pass


POLICIES: Registry[Policy] = Registry("policy")


def check_k(k: int) -> int:
    if k < 1:
        raise ConfigError(f"k (draft length) must be >= 1, got {k}")
    return k
