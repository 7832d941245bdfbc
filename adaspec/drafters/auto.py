"""The auto drafter: a bandit over the available drafters, by tokens per second.

Which drafter pays depends on the text (n-gram lookup wins where output copies the prompt,
a draft model where it does not) and on the machine (a draft model that costs half a
target step cannot win on a CPU). Rather than a fixed rule, each step is decided from what
this request has shown so far, so the choice switches when the evidence changes.

With a policy that predicts rates (goodput), the arms are asked cheapest first, and an arm
is asked only when the policy promises more tokens per second from it (its acceptance and
drafting cost, learned online) than the draft in hand is worth; the best draft is kept. A
free n-gram match is therefore always looked up, and a draft model runs only where the
lookup has nothing as good, and only on a machine where it pays. Step rewards could not
tell these apart: an n-gram arm's steps include every plain step it had no match for, and a
draft model's first short probes lose to plain steps even where longer drafts would win.
Exploration comes from the policy's estimates drifting back to their priors while unused.
With any other policy, each step uses the arm with the best discounted tokens per second
seen in this request plus an exploration bonus (discounted UCB). With no draft model it
chooses among the model-free drafters only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.drafters.base import DRAFTERS, Drafter
from adaspec.drafters.model import ModelDrafter
from adaspec.drafters.model_tree import ModelTreeDrafter
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome

# The model-free arms, cheapest to propose first: each is asked (it costs next to nothing)
# and the policy values what it proposes.
MODEL_FREE_ARMS = ("ngram", "recycling", "aded")


class _Arm:
    """Discounted sums of one drafter's rewards (tokens/s of the steps it drafted)."""

    def __init__(self) -> None:
        self.weight = 0.0
        self.reward = 0.0

    def mean(self) -> float:
        return self.reward / self.weight if self.weight else 0.0


@DRAFTERS.register("auto")
class AutoDrafter:
    needs_draft_model: ClassVar[bool] = False
    uses_draft_model: ClassVar[bool] = True  # as an arm, when one is given

    def __init__(
        self,
        arms: dict[str, Drafter],
        shares: dict[str, float] | None = None,
        discount: float = 0.95,
        exploration: float = 0.3,
    ) -> None:
        self.drafters = arms  # cheapest to propose first
        # Per arm, the guess of what a drafted token costs as a share of a target step
        # before it is timed (a draft model: its weights over the target's).
        self.shares = shares or {}
        self.discount = discount
        self.exploration = exploration
        self.arms = {name: _Arm() for name in arms}
        self.current: str | None = None  # the arm proposing in the step under way
        self.row_top_k = max((arm.row_top_k for arm in arms.values()), default=0)

    @classmethod
    def create(cls, target: Backend, draft: Backend | None) -> AutoDrafter:
        arms: dict[str, Drafter] = {
            name: DRAFTERS.get(name).create(target, None) for name in MODEL_FREE_ARMS
        }
        shares = dict.fromkeys(arms, 0.0)
        if draft is not None:
            model = ModelDrafter.create(target, draft)
            arms["model"], arms["model-tree"] = model, ModelTreeDrafter(model)  # one cache
            shares["model"] = shares["model-tree"] = draft.weight_bytes / max(
                target.weight_bytes, 1
            )
        return cls(arms, shares)

    def start(self, state: DecodeState) -> None:
        self.arms = {name: _Arm() for name in self.drafters}
        self.current = None
        for drafter in self.drafters.values():
            drafter.start(state)

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        if budget.value is not None:
            return self.best_draft(state, budget, budget.value)
        self.current = self.choose()
        return self.drafters[self.current].propose(state, budget.for_drafter(self.current))

    def best_draft(
        self, state: DecodeState, budget: Budget, value: Callable[[Draft], float]
    ) -> Draft:
        """Cheapest arm first; a dearer one only if the policy promises more from it than
        the draft in hand is worth (one not timed yet is asked only when nothing better than
        a plain step is in hand, and its guessed cost does not rule it out). A draft at
        least as good as the one in hand replaces it, so the arm that spent the step's
        drafting time is the one the policy learns from. A sampled draft is taken as it
        comes: choosing it by the value of its own tokens would bias the output."""
        plain = value(Draft())
        best, in_hand = Draft(), plain
        for name, drafter in self.drafters.items():
            arm = budget.for_drafter(name)
            if arm.max_tokens == 0 or self._promise(name, arm, budget, plain) < in_hand:
                continue
            draft = drafter.propose(state, arm)
            if draft.sampled:  # asked on promises alone; its tokens must not choose it
                return draft
            worth = value(draft)
            if worth >= in_hand:
                best, in_hand = draft, worth
        return best

    def _promise(self, name: str, arm: Budget, budget: Budget, plain: float) -> float:
        """What the policy expects of an arm; one not timed yet counts as a plain step,
        or less where its guessed cost rules it out."""
        if arm.promise is not None:
            return arm.promise
        if budget.promise_at is None or name not in self.shares:
            return plain
        return min(plain, budget.promise_at(name, self.shares[name]))

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
