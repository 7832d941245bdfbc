"""The Policy protocol: which drafters to ask and how much they may draft, learned from
past steps.

A policy never drafts and a drafter never decides how much to draft: the policy hands the
drafters a Budget, each drafter asked fills at most that much, and all see the outcome.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import ClassVar, Protocol, runtime_checkable

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.errors import ConfigError
from adaspec.policies.arm_choice import ArmChoice
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

    def open(self, state: DecodeState, arms: Mapping[str, float]) -> Policy:
        """This policy for one request, started: its own per-request state, sharing by
        reference what is learned across requests (cost curves, acceptance priors), so
        many requests can be in flight through one policy."""
        ...

    def start(self, state: DecodeState, arms: Mapping[str, float]) -> None:
        """Begin a request on this object. ``arms``: the drafters to choose among,
        cheapest first, each with its drafted token's guessed cost as a share of a target
        step. Rebinds (never clears in place) what belongs to one request: ``open`` relies
        on it."""
        ...

    def finish(self) -> None:
        """The request ended: keep what it taught for later requests."""
        ...

    @classmethod
    def may_ask_draft_model(cls, target: Backend, share: float) -> bool:
        """Whether a draft model whose token costs this share of a target step could ever
        be worth asking here; False: a drafter that merely may use one is built without."""
        ...

    def budget(self, state: DecodeState) -> Budget:
        """Which drafters to ask (``ask``) and how much each may draft."""
        ...

    def value(self, draft: Draft) -> float:
        """What verifying a draft in hand is worth, on the scale of ``Budget.promise`` and
        ``Budget.plain``: of several drafts asked for, the engine keeps the worthiest."""
        ...

    def trim(self, draft: Draft) -> int:
        """How many of the drafted tokens to verify (drafting is done, verifying is not).
        Asked only for a draft that is a function of the committed text (``not
        draft.sampled``): a sampled one is verified as its drafter stopped it."""
        ...

    def observe(self, outcome: StepOutcome) -> None: ...


class PolicyDefaults:
    """The parts most policies leave alone: no target-specific set-up, nothing to forget
    between requests, every drafted token verified, nothing learned but which drafter to
    ask (a bandit over the arms; ``asking`` names its pick in a budget)."""

    uses_cost_profile: ClassVar[bool] = False
    choice: ArmChoice = ArmChoice(())

    @classmethod
    def create(cls, k: int | None, target: Backend) -> Policy:
        return cls() if k is None else cls(k=k)  # type: ignore[call-arg]

    @classmethod
    def may_ask_draft_model(cls, target: Backend, share: float) -> bool:
        return True

    def open(self, state: DecodeState, arms: Mapping[str, float]) -> Policy:
        request = copy.copy(self)  # shares the learned estimators; start() rebinds the rest
        request.start(state, arms)
        return request  # type: ignore[return-value]

    def start(self, state: DecodeState, arms: Mapping[str, float]) -> None:
        self.choice = ArmChoice(tuple(arms))

    def finish(self) -> None:
        pass

    def asking(self, budget: Budget) -> Budget:
        """This budget for the drafter the bandit picks."""
        return replace(budget, ask=self.choice.choose())

    def trim(self, draft: Draft) -> int:
        return len(draft.tokens)

    def value(self, draft: Draft) -> float:
        return 0.0  # one drafter is asked: its draft is the one in hand

    def observe(self, outcome: StepOutcome) -> None:
        self.choice.observe(outcome)


POLICIES: Registry[Policy] = Registry("policy")


def check_k(k: int) -> int:
    if k < 1:
        raise ConfigError(f"k (draft length) must be >= 1, got {k}")
    return k
