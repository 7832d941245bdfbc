"""A process's first request must not learn what verifying costs by losing: the machine's
costs are timed when the engine is built (once, then read from the cache)."""

from __future__ import annotations

from adaspec.build import build_engine
from adaspec.config import GenerationConfig
from adaspec.profile import saved_profile
from tests.table import Clock, TableBackend
from tests.test_drafter_budgets import REPEATING, cyclic_target


def llama_cpp_like(n: int) -> float:
    """ms of a forward over n positions where each costs about one step (41, 84, 127...):
    a CPU on llama.cpp, where even a draft sure to be accepted loses."""
    return 43.0 * n - 2.0


def first_request(drafter: str) -> tuple[float, int]:
    clock = Clock()
    target = cyclic_target(clock)
    target.cost_ms = llama_cpp_like
    engine = build_engine(target, None, drafter, "goodput", clock=clock)
    result = engine.generate(REPEATING, GenerationConfig(max_new_tokens=48))
    return result.stats.wall_s, result.stats.summary()["drafted"]


def test_an_untimed_expensive_machine_is_not_bet_on():
    """Every copy would be accepted, yet a 2-position forward costs 2.05 one-position ones:
    auto drafts nothing on its first request and is no slower than plain decoding."""
    plain, _ = first_request("none")
    auto, drafted = first_request("auto")
    assert drafted == 0
    assert auto <= plain


def test_the_costs_are_timed_once_and_saved():
    clock = Clock()
    target = TableBackend(cyclic_target(clock).table, clock, llama_cpp_like)
    assert saved_profile(target) is None
    build_engine(target, None, "ngram", "goodput", clock=clock)
    profile = saved_profile(target)
    assert profile is not None and profile.ms[0][:3] == [41.0, 84.0, 127.0]
    timed = clock.now
    build_engine(target, None, "ngram", "goodput", clock=clock)
    assert clock.now == timed  # read from the cache, not timed again
