"""Draft exactly k tokens every step: the classic speculative-decoding setting."""

from __future__ import annotations

from adaspec.policies.base import POLICIES, Budget, check_k
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome


@POLICIES.register("fixed")
class FixedPolicy:
    def __init__(self, k: int = 4) -> None:
        self.k = check_k(k)

    def start(self, state: DecodeState) -> None:
        pass

    def budget(self, state: DecodeState) -> Budget:
        return Budget(self.k)

    def observe(self, outcome: StepOutcome) -> None:
        pass
