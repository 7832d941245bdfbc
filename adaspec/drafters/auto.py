"""The auto drafter: a bandit over the available drafters, rewarded by tokens per second.

Which drafter pays depends on the text (n-gram lookup wins where output copies the prompt,
a draft model where it does not) and on the machine (a draft model that costs half a
target step cannot win on a CPU). Rather than a fixed rule, each step uses the arm with the
best discounted tokens-per-second seen in this request plus an exploration bonus
(discounted UCB), so it switches when the evidence changes. With no draft model it chooses
among the model-free drafters only.
"""

from __future__ import annotations

import math
from typing import ClassVar

from adaspec.backends.base import Backend
from adaspec.drafters.base import DRAFTERS, Draft, Drafter
from adaspec.drafters.model import ModelDrafter
from adaspec.drafters.ngram import NgramDrafter
from adaspec.policies.base import Budget
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome


class _Arm:
    """Discounted sums of one drafter's rewards (tokens/s of the steps it drafted)."""

    def __init__(self) -> None:
        self.weight = 0.0
        self.reward = 0.0

    def mean(self) -> float:
        return self.reward / self.weight if self.weight else 0.0


@DRAFTERS.register("auto")
class AutoDrafter:
    needs_draft_model: ClassVar[bool] = False  # uses one when given, never requires it

    def __init__(
        self, arms: dict[str, Drafter], discount: float = 0.95, exploration: float = 0.3
    ) -> None:
        self.drafters = arms
        self.discount = discount
        self.exploration = exploration
        self.arms = {name: _Arm() for name in arms}
        self.current: str | None = None  # the arm proposing in the step under way

    @classmethod
    def create(cls, target: Backend, draft: Backend | None) -> AutoDrafter:
        arms: dict[str, Drafter] = {"ngram": NgramDrafter.create(target, draft)}
        if draft is not None:
            arms["model"] = ModelDrafter.create(target, draft)
        return cls(arms)

    def start(self, state: DecodeState) -> None:
        self.arms = {name: _Arm() for name in self.drafters}
        self.current = None
        for drafter in self.drafters.values():
            drafter.start(state)

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        self.current = self.choose()
        return self.drafters[self.current].propose(state, budget.for_drafter(self.current))

    def observe(self, outcome: StepOutcome) -> None:
        if self.current is not None:
            seconds = outcome.draft_s + outcome.verify_s
            for arm in self.arms.values():
                arm.weight *= self.discount
                arm.reward *= self.discount
            arm = self.arms[self.current]
            arm.weight += 1.0
            arm.reward += outcome.emitted / max(seconds, 1e-9)
            self.current = None
        for drafter in self.drafters.values():
            drafter.observe(outcome)

    def choose(self) -> str:
        """An arm never tried first (in the order given); then the best upper bound."""
        for name, arm in self.arms.items():
            if arm.weight == 0.0:
                return name
        total = sum(arm.weight for arm in self.arms.values())
        scale = sum(arm.reward for arm in self.arms.values()) / total  # tokens/s overall

        def bound(name: str) -> float:
            arm = self.arms[name]
            return arm.mean() + self.exploration * scale * math.sqrt(
                math.log(max(total, 1.0)) / arm.weight
            )

        return max(self.arms, key=bound)
