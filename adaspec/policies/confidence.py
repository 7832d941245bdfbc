"""Stop drafting at the first token the drafter is unsure of (top probability < threshold),
and never past k_max: cheap drafts where the draft model is confident, none where it is not."""

from __future__ import annotations

from adaspec.budget import Budget
from adaspec.errors import ConfigError
from adaspec.policies.base import POLICIES, PolicyDefaults, check_k
from adaspec.state import DecodeState


@POLICIES.register("confidence")
class ConfidencePolicy(PolicyDefaults):
    def __init__(self, k: int = 8, threshold: float = 0.4) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"confidence threshold must be in [0, 1], got {threshold}")
        self.k_max = check_k(k)
        self.threshold = threshold

    def budget(self, state: DecodeState) -> Budget:
        return self.asking(Budget(self.k_max, min_confidence=self.threshold))
