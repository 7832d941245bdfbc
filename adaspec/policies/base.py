"""The Policy protocol: the budget for the next draft, learned from past steps.

A policy never drafts and a drafter never decides how much to draft: the policy hands the
drafter a Budget, the drafter fills at most that much, and both see the step's outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from adaspec.backends.base import Backend
from adaspec.errors import ConfigError
from adaspec.registry import Registry
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome

if TYPE_CHECKING:
    from adaspec.drafters.base import Draft


@dataclass(frozen=True)
class Budget:
    """At most ``max_tokens`` draft tokens; stop before any token whose drafter confidence
    (its estimate that the target accepts it) is below ``min_confidence``."""

    max_tokens: int
    min_confidence: float = 0.0
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
        limit = max(0, limit)
        per = {name: b.capped(limit) for name, b in self.per_drafter.items()}
        return replace(self, max_tokens=min(self.max_tokens, limit), per_drafter=per)

    def enough(self, confidences: Sequence[float]) -> bool:
        """Whether the tokens drafted so far (these confidences) are all worth drafting."""
        return len(confidences) >= self.max_tokens or (
            self.stop is not None and self.stop(confidences)
        )

    def for_drafter(self, name: str) -> Budget:
        return self.per_drafter.get(name, self)

    @property
    def allows_drafting(self) -> bool:
        return self.max_tokens > 0 or any(b.max_tokens > 0 for b in self.per_drafter.values())


@runtime_checkable
class Policy(Protocol):
    uses_cost_profile: ClassVar[bool]  # plans with what a forward costs on this machine

    @classmethod
    def create(cls, k: int | None, target: Backend) -> Policy:
        """Build for this target; k is the policy's draft-length knob (None: its default)."""
        ...

    def start(self, state: DecodeState) -> None:
        """Forget the previous request."""
        ...

    @classmethod
    def may_ask_draft_model(cls, target: Backend, share: float) -> bool:
        """Whether a draft model whose token costs this share of a target step could ever
        be worth asking here; False: a drafter that merely may use one is built without."""
        ...

    def budget(self, state: DecodeState) -> Budget: ...

    def trim(self, draft: Draft) -> int:
        """How many of the drafted tokens to verify (drafting is done, verifying is not).
        Asked only for a draft that is a function of the committed text (``not
        draft.sampled``): a sampled one is verified as its drafter stopped it."""
        ...

    def observe(self, outcome: StepOutcome) -> None: ...


class PolicyDefaults:
    """The parts most policies leave alone: no target-specific set-up, nothing to forget
    between requests, every drafted token verified, nothing learned."""

    uses_cost_profile: ClassVar[bool] = False

    @classmethod
    def create(cls, k: int | None, target: Backend) -> Policy:
        return cls() if k is None else cls(k=k)  # type: ignore[call-arg]

    @classmethod
    def may_ask_draft_model(cls, target: Backend, share: float) -> bool:
        return True

    def start(self, state: DecodeState) -> None:
        pass

    def trim(self, draft: Draft) -> int:
        return len(draft.tokens)

    def observe(self, outcome: StepOutcome) -> None:
        pass


POLICIES: Registry[Policy] = Registry("policy")


def check_k(k: int) -> int:
    if k < 1:
        raise ConfigError(f"k (draft length) must be >= 1, got {k}")
    return k
