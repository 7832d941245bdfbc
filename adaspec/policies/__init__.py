"""Draft-length policies: how much to draft before each step."""

from adaspec.policies import confidence, fixed, goodput, heuristic  # noqa: F401  (registers them)
from adaspec.policies.base import POLICIES, Budget, Policy

__all__ = ["POLICIES", "Budget", "Policy"]
