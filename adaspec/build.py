"""Assembling an Engine from names: the API, the bench and replay all build one here, so a
drafter or policy behaves the same wherever it is run."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter

from adaspec.backends.base import Backend
from adaspec.drafters import DRAFTERS
from adaspec.engine import Engine
from adaspec.errors import ConfigError
from adaspec.policies import POLICIES
from adaspec.profile import machine_profile


def build_engine(
    target: Backend,
    draft: Backend | None = None,
    drafter: str = "auto",
    policy: str = "goodput",
    k: int | None = None,
    clock: Callable[[], float] = perf_counter,
    time_costs: bool = True,
    record_rows: int = 0,
) -> Engine:
    """An Engine over loaded backends, the drafter and policy given by registry name. A
    drafter that cannot use a draft model is built without it; ``k`` is the policy's
    draft-length knob (None: its default). A policy that plans with costs finds them timed
    on this machine (``time_costs=False``: a replay, whose costs are a given profile);
    ``record_rows``: keep each step's top-k rows in its outcome (Engine)."""
    drafter_cls, policy_cls = DRAFTERS.get(drafter), POLICIES.get(policy)
    if drafter_cls.needs_draft_model and draft is None:
        raise ConfigError(f"drafter {drafter!r} needs a draft model: pass --draft NAME_OR_PATH")
    if policy_cls.uses_cost_profile and time_costs:
        machine_profile(target, clock)  # timed once per model, CPU and threads, then saved
    made = drafter_cls.create(target, draft if drafter_cls.uses_draft_model else None)
    policy_made = policy_cls.create(k, target)
    return Engine(target, made, policy_made, clock=clock, record_rows=record_rows)
