"""Which drafter to ask, for a policy that does not predict rates: a discounted UCB bandit
over the steps each drafter drafted, rewarded by their tokens per second.

Each step's arm is the one with the best discounted tokens per second seen in this request
plus an exploration bonus, so the choice switches when the text does; an arm never tried
goes first. With one arm there is nothing to choose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from adaspec.stats import StepOutcome


class _Arm:
    """Discounted sums of one drafter's rewards (tokens/s of the steps it drafted)."""

    def __init__(self) -> None:
        self.weight = 0.0
        self.reward = 0.0

    def mean(self) -> float:
        return self.reward / self.weight if self.weight else 0.0


class ArmChoice:
    def __init__(self, names: Sequence[str], discount: float = 0.95, exploration: float = 0.3):
        self.arms = {name: _Arm() for name in names}  # in the order given
        self.discount = discount
        self.exploration = exploration
        self.current: str | None = None  # the arm asked in the step under way

    def choose(self) -> tuple[str, ...]:
        """The arm to ask this step (none when there are none)."""
        if not self.arms:
            return ()
        self.current = self._best()
        return (self.current,)

    def observe(self, outcome: StepOutcome) -> None:
        if self.current is None:
            return
        for arm in self.arms.values():
            arm.weight *= self.discount
            arm.reward *= self.discount
        arm = self.arms[self.current]
        arm.weight += 1.0
        arm.reward += outcome.emitted / max(outcome.draft_s + outcome.verify_s, 1e-9)
        self.current = None

    def _best(self) -> str:
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
