"""Draft exactly k tokens every step: the classic speculative-decoding setting."""

from __future__ import annotations

from adaspec.budget import Budget
from adaspec.policies.base import POLICIES, PolicyDefaults, check_k
from adaspec.state import DecodeState


@POLICIES.register("fixed")
class FixedPolicy(PolicyDefaults):
    def __init__(self, k: int = 4) -> None:
        self.k = check_k(k)

    def budget(self, state: DecodeState) -> Budget:
        return self.asking(Budget(self.k))
