"""What a policy hands the drafters before each step: plain data, no callbacks.

Its own module, so that the Drafter and Policy protocols, which both speak of it, import
neither each other nor anything of the other's side.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Budget:
    """At most ``max_tokens`` draft nodes, none deeper than ``max_depth`` (a chain drafter
    drafts ``depth_limit`` tokens); stop before any token whose drafter confidence (its
    estimate that the target accepts it) is below ``min_confidence``, and before the next
    token once the path drafted so far is too unlikely to be accepted (``min_path``)."""

    max_tokens: int
    min_confidence: float = 0.0
    max_depth: int | None = None  # None: as deep as max_tokens
    # The policy's stop rule for a drafter that pays per token (a draft model), as data:
    # with d tokens drafted, stop when P(all d accepted) < min_path[d], each token's
    # confidence read as P(accepted) through ``calibration``. Empty: draft to the limits.
    min_path: tuple[float, ...] = ()  # [depth]
    calibration: tuple[tuple[float, float], ...] = ()  # (confidence, P(accepted)), ascending
    # Tokens per millisecond the policy expects of a step drafting under this budget; the
    # engine asks a drafter only where it promises more than the draft in hand is worth
    # (``plain``, a plain step's worth, before any). None: no prediction (always asked).
    promise: float | None = None
    plain: float = 0.0
    ask: tuple[str, ...] = ()  # the drafters to ask this step, in order; none: a plain step
    per_drafter: Mapping[str, Budget] = field(default_factory=dict)  # a drafter's own budget

    def capped(self, limit: int) -> Budget:
        """No root path longer than ``limit`` (the request's room): a chain's length, a
        tree's depth; the nodes are left as they are (none when the limit is 0)."""
        limit = max(0, limit)
        per = {name: b.capped(limit) for name, b in self.per_drafter.items()}
        nodes = self.max_tokens if limit else 0
        depth = min(self.depth_limit, limit)
        return replace(self, max_tokens=nodes, max_depth=depth, per_drafter=per)

    @property
    def depth_limit(self) -> int:
        """The longest root path allowed: a chain drafter's length."""
        return self.max_tokens if self.max_depth is None else min(self.max_depth, self.max_tokens)

    def enough(self, confidences: Sequence[float]) -> bool:
        """Whether to stop after the tokens drafted so far on a path (these confidences)."""
        depth = len(confidences)
        if depth >= self.depth_limit:
            return True
        floors = self.min_path
        return depth < len(floors) and self.path_probability(confidences) < floors[depth]

    def path_probability(self, confidences: Sequence[float]) -> float:
        """P(every one of these tokens is accepted), read through the calibration."""
        product = 1.0
        for confidence in confidences:
            product *= self.probability(confidence)
        return product

    def probability(self, confidence: float) -> float:
        """P(accepted) of a token of this confidence: the calibration's points joined by
        straight lines (the confidence itself where there are none)."""
        points = self.calibration
        if not points:
            return confidence
        i = bisect_right(points, (confidence, float("inf")))
        if i == 0:
            return points[0][1]
        if i == len(points):
            return points[-1][1]
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        return y0 + (y1 - y0) * (confidence - x0) / max(x1 - x0, 1e-12)

    def for_drafter(self, name: str) -> Budget:
        return self.per_drafter.get(name, self)

    @property
    def allows_drafting(self) -> bool:
        return any(self.for_drafter(name).max_tokens > 0 for name in self.ask)
