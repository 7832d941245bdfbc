"""What a policy hands a drafter before each step: how much it may draft.

Its own module, so that the Drafter and Policy protocols, which both speak of it, import
neither each other nor anything of the other's side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from adaspec.draft import Draft


@dataclass(frozen=True)
class Budget:
    """At most ``max_tokens`` draft nodes, none deeper than ``max_depth`` (a chain drafter
    drafts ``depth_limit`` tokens); stop before any token whose drafter confidence (its
    estimate that the target accepts it) is below ``min_confidence``."""

    max_tokens: int
    min_confidence: float = 0.0
    max_depth: int | None = None  # None: as deep as max_tokens
    # Budgets for named drafters that differ from this one (a policy that learns per
    # drafter fills it; the auto drafter reads the entry of the arm it uses).
    per_drafter: Mapping[str, Budget] = field(default_factory=dict)
    # What the policy expects, in tokens per millisecond, so that a drafter choosing among
    # drafters (auto) asks only those worth asking: ``promise`` of a step drafting under
    # this budget (drafting included), ``value`` of verifying a draft already in hand,
    # ``promise_at`` of a drafter not timed yet (by name) whose drafted token costs this
    # share of a one-token target forward. None: the policy makes no predictions.
    promise: float | None = None
    value: Callable[[Draft], float] | None = None
    promise_at: Callable[[str, float], float] | None = None
    # Whether to stop drafting before the next token, given the confidences of those drafted
    # so far: asked by a drafter whose every token costs a forward (a draft model), so that
    # a draft going wrong stops early. None: draft up to max_tokens.
    stop: Callable[[Sequence[float]], bool] | None = None

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
        """Whether the tokens drafted so far (these confidences) are all worth drafting."""
        return len(confidences) >= self.depth_limit or (
            self.stop is not None and self.stop(confidences)
        )

    def for_drafter(self, name: str) -> Budget:
        return self.per_drafter.get(name, self)

    @property
    def allows_drafting(self) -> bool:
        return self.max_tokens > 0 or any(b.max_tokens > 0 for b in self.per_drafter.values())
