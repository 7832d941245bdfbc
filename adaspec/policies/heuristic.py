"""Hugging Face's "heuristic" schedule for assisted generation: grow the draft by 2 after a
fully accepted draft, shrink it by 1 otherwise, never below 1."""

from __future__ import annotations

from collections.abc import Mapping

from adaspec.budget import Budget
from adaspec.policies.base import POLICIES, PolicyDefaults, check_k
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome


@POLICIES.register("heuristic")
class HeuristicPolicy(PolicyDefaults):
    def __init__(self, k: int = 4, k_max: int = 64) -> None:
        self.initial = check_k(k)
        self.k_max = max(k_max, self.initial)
        self.k = self.initial

    def start(self, state: DecodeState, arms: Mapping[str, float]) -> None:
        super().start(state, arms)
        self.k = self.initial

    def budget(self, state: DecodeState) -> Budget:
        return self.asking(Budget(self.k))

    def observe(self, outcome: StepOutcome) -> None:
        super().observe(outcome)
        if outcome.drafted == 0:
            return  # nothing was proposed (no n-gram match, or the length cap): no evidence
        if outcome.accepted == outcome.drafted:
            self.k = min(self.k + 2, self.k_max)
        else:
            self.k = max(self.k - 1, 1)
