"""A process's first request must not learn what verifying costs by losing: the machine's
costs are timed when the engine is built (once, then read from the cache)."""

from __future__ import annotations

from itertools import cycle

from adaspec.build import EngineSpec, build_engine
from adaspec.config import GenerationConfig
from adaspec.policies.fixed import FixedPolicy
from adaspec.policies.goodput import GoodputPolicy
from adaspec.profile import machine_profile, saved_profile
from tests.table import REPEATING, Clock, TableBackend, cyclic_target, gpu_like, random_table


def llama_cpp_like(n: int) -> float:
    """ms of a forward over n positions where each costs about one step (41, 84, 127...):
    a CPU on llama.cpp, where even a draft sure to be accepted loses."""
    return 43.0 * n - 2.0


def first_request(drafter: str) -> tuple[float, int]:
    clock = Clock()
    target = cyclic_target(clock)
    target.cost_ms = llama_cpp_like
    engine = build_engine(EngineSpec(drafter=drafter, policy="goodput"), target, None, clock=clock)
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
    build_engine(EngineSpec(drafter="ngram", policy="goodput"), target, None, clock=clock)
    profile = saved_profile(target)
    assert profile is not None and profile.ms[0][:3] == [41.0, 84.0, 127.0]
    timed = clock.now
    build_engine(EngineSpec(drafter="ngram", policy="goodput"), target, None, clock=clock)
    assert clock.now == timed  # read from the cache, not timed again


def test_a_timing_taken_while_the_machine_was_busy_plans_one_run_and_is_not_kept():
    """Forwards timed while tests ran beside them (repeats 3x apart) must not become every
    later run's plan: the next load times them again."""
    clock = Clock()
    busy = cycle([1.0, 3.0])
    target = TableBackend(
        cyclic_target(clock).table, clock, lambda n: llama_cpp_like(n) * next(busy)
    )
    profile = machine_profile(target, clock)
    assert not profile.steady() and saved_profile(target) is None
    assert profile.ms[0][0] > 0  # still this run's plan


def test_a_draft_model_that_could_never_pay_is_not_worth_loading():
    """The default pair's 0.5B draft costs 0.44 of a target step by its weights: on a
    llama.cpp-like machine even drafts all accepted lose to plain steps, on a GPU-like one
    they win. (``adaspec generate`` then skips loading it: a second of every call.)"""
    for cost, worth_it in ((llama_cpp_like, False), (gpu_like, True)):
        clock = Clock()
        target = TableBackend(random_table(4, 1.0, seed=1), clock, cost, label=f"t{worth_it}")
        machine_profile(target, clock)  # as a first load would time it, on this clock
        assert GoodputPolicy.may_ask_draft_model(target, 0.44) is worth_it
    assert FixedPolicy.may_ask_draft_model(target, 0.44)  # a policy that prices nothing
