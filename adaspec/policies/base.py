"""The Policy protocol: the budget for the next draft, learned from past steps.

A policy never drafts and a drafter never decides how much to draft: the policy hands the
drafter a Budget, the drafter fills at most that much, and both see the step's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from adaspec.errors import ConfigError
from adaspec.registry import Registry
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome


@dataclass(frozen=True)
class Budget:
    """At most ``max_tokens`` draft tokens; stop before any token whose drafter confidence
    (its estimate that the target accepts it) is below ``min_confidence``."""

    max_tokens: int
    min_confidence: float = 0.0

    def capped(self, limit: int) -> Budget:
        return replace(self, max_tokens=max(0, min(self.max_tokens, limit)))


@runtime_checkable
class Policy(Protocol):
    def start(self, state: DecodeState) -> None:
        """Forget the previous request."""
        ...

    def budget(self, state: DecodeState) -> Budget: ...

    def observe(self, outcome: StepOutcome) -> None: ...


POLICIES: Registry[Policy] = Registry("policy")


def check_k(k: int) -> int:
    if k < 1:
        raise ConfigError(f"k (draft length) must be >= 1, got {k}")
    return k
