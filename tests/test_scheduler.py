"""Many requests in flight through one engine: each request's greedy ids are its ids
alone (no per-request state is shared, and each slot's cache is its own), whatever else
runs beside it, joins or leaves; and the scheduler's slots, queue, cancel and prefix
reuse."""

from __future__ import annotations

import threading

import pytest

from adaspec.backends.torch_hf import TorchBackend
from adaspec.build import EngineSpec, build_engine
from adaspec.config import GenerationConfig
from adaspec.drafters import DRAFTERS
from adaspec.drafters.none import NoDrafter
from adaspec.engine import Engine, Generation
from adaspec.policies import POLICIES
from adaspec.policies.fixed import FixedPolicy
from adaspec.server.scheduler import Failed, Finished, QueueFull, Scheduler, Step
from tests.test_engine import PROMPTS, argmax_loop
from tests.tiny import ClockedBackend, FakeClock, perturbed, tiny_model

SLOTS = 3
MATRIX = [(d, p) for d in DRAFTERS.names() for p in POLICIES.names()]
# (prompt, tokens): the first runs alone for a few steps, the others join it mid-flight
JOBS = [(PROMPTS[3], 30), (PROMPTS[1], 12), (PROMPTS[2], 20)]


@pytest.fixture(scope="module")
def target() -> TorchBackend:
    return TorchBackend(tiny_model(seed=0), None, label="tiny", slots=SLOTS)


@pytest.fixture(scope="module")
def expected(target) -> list[list[int]]:
    return [argmax_loop(target.model, prompt, n) for prompt, n in JOBS]


def run_together(engine: Engine, jobs, alone_steps: int = 3) -> list[Generation]:
    """The jobs in slots 0..n-1 of one engine: the first alone for ``alone_steps`` steps,
    then all of them, each step one ``step_all`` over those not done."""
    gens = [
        Generation(engine, prompt, GenerationConfig(max_new_tokens=n), slot)
        for slot, (prompt, n) in enumerate(jobs)
    ]
    engine.begin(gens[0])
    for _ in range(alone_steps):
        engine.step_all([gens[0]])
    for gen in gens[1:]:
        engine.begin(gen)
    while active := [gen for gen in gens if not gen.done]:
        engine.step_all(active)
    for gen in gens:
        engine.end(gen)
    return gens


@pytest.mark.parametrize(("drafter", "policy"), MATRIX)
def test_requests_in_flight_together_decode_as_each_alone(target, expected, drafter, policy):
    """Every drafter x policy: three requests sharing target passes (and the draft
    model's slots) return the argmax loop's ids, and the shared passes did draft."""
    clock = FakeClock()
    draft = TorchBackend(perturbed(target.model, 0.3), None, label="draft", slots=SLOTS)
    engine = build_engine(
        EngineSpec(drafter=drafter, policy=policy),
        ClockedBackend(target, clock),
        draft,
        clock=clock,
    )
    gens = run_together(engine, JOBS)
    for gen, want in zip(gens, expected, strict=True):
        assert gen.token_ids == want, f"{drafter}:{policy}, slot {gen.slot}"
    shared = [s for gen in gens for s in gen.stats.steps if s.batch_rows != s.positions]
    assert shared, "no step shared a target pass"
    if drafter != "none" and policy != "goodput":  # goodput learns costs from solo steps
        assert any(s.drafted for s in shared)


def test_a_shared_pass_is_one_forward_over_every_slots_rows(target):
    """The clock is charged once per step_all, for all its rows together."""
    clock = FakeClock()
    engine = build_engine(
        EngineSpec(drafter="ngram", policy="fixed"),
        ClockedBackend(target, clock),
        None,
        clock=clock,
    )
    gens = run_together(engine, JOBS[:2], alone_steps=0)
    rows = [s.batch_rows for s in gens[0].stats.steps[1:4]]
    assert all(r is not None and r > gens[0].stats.steps[1].positions for r in rows)


def collect(scheduler: Scheduler, jobs, **submit) -> list[list]:
    """Submit every job, wait for each one's last event; the events per job."""
    events: list[list] = [[] for _ in jobs]
    done = [threading.Event() for _ in jobs]

    def receiver(i: int):
        def on_event(event) -> None:
            events[i].append(event)
            if isinstance(event, Finished | Failed):
                done[i].set()

        return on_event

    for i, (prompt, n) in enumerate(jobs):
        scheduler.submit(prompt, GenerationConfig(max_new_tokens=n), receiver(i), **submit)
    for event in done:
        assert event.wait(60)
    return events


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_the_scheduler_runs_requests_in_slots_with_their_ids_alone(target, expected, parallel):
    engine = build_engine(EngineSpec(drafter="ngram", policy="heuristic"), target, None)
    scheduler = Scheduler(engine, parallel=parallel, prefix_reuse=False)
    scheduler.start()
    try:
        events = collect(scheduler, JOBS * 2)
    finally:
        scheduler.shutdown(30)
    for job_events, want in zip(events, expected * 2, strict=True):
        *steps, last = job_events
        assert all(isinstance(e, Step) for e in steps) and isinstance(last, Finished)
        assert [t for e in steps for t in e.token_ids] == want == last.result.token_ids
    assert scheduler.busy_slots == 0 and scheduler.queue_depth == 0


def test_a_cancelled_request_frees_its_slot_within_a_step(target, expected):
    engine = Engine(target, NoDrafter(), FixedPolicy(1))
    scheduler = Scheduler(engine, parallel=1)
    steps = threading.Semaphore(0)
    finished: list[Finished] = []
    ticket = scheduler.submit(
        PROMPTS[0],
        GenerationConfig(max_new_tokens=100),
        lambda e: steps.release() if isinstance(e, Step) else finished.append(e),
    )
    scheduler.start()
    try:
        assert steps.acquire(timeout=30)
        ticket.cancel()
        events = collect(scheduler, JOBS[1:2])
    finally:
        scheduler.shutdown(30)
    assert finished and finished[0].cancelled and len(finished[0].result.token_ids) < 100
    assert events[0][-1].result.token_ids == expected[1]


def test_a_full_queue_refuses_more():
    """One slot free and no queue: one request is taken, the next refused."""
    engine = Engine(TorchBackend(tiny_model(seed=0)), NoDrafter(), FixedPolicy(1))
    scheduler = Scheduler(engine, parallel=1, max_queue=0)  # not started: nothing runs
    scheduler.submit([1, 2], GenerationConfig(max_new_tokens=2), lambda e: None)
    with pytest.raises(QueueFull):
        scheduler.submit([1, 2], GenerationConfig(max_new_tokens=2), lambda e: None)


def test_a_prompt_extending_an_earlier_prompt_skips_that_prefill(target, monkeypatch):
    """A second turn resending the first turn's prompt runs in the slot that holds it and
    prefills only the rest, leaving as many tokens to prefill as the backend's exact reuse
    asks (here 4: fp64 tiny models round alike at any split); the first turn's answer,
    decoded a few tokens at a time, is not reused."""
    monkeypatch.setattr(type(target), "prefill_invariant_from", 4)
    engine = build_engine(EngineSpec(drafter="ngram", policy="fixed"), target, None)
    scheduler = Scheduler(engine, parallel=2)
    scheduler.start()
    try:
        first = collect(scheduler, JOBS[:1])[0][-1]
        turn = [*JOBS[0][0], *first.result.token_ids, 60, 61, 62]
        second = collect(scheduler, [(turn, 10)])[0][-1]
        short = collect(scheduler, [(JOBS[0][0][:6], 5)])[0][-1]
    finally:
        scheduler.shutdown(30)
    assert first.cached_tokens == 0
    assert second.cached_tokens == len(JOBS[0][0])
    assert second.result.token_ids == argmax_loop(target.model, turn, 10)
    assert short.cached_tokens == 6 - 4  # room left for 4 tokens to prefill


def test_a_backend_whose_prefill_rounds_by_split_reuses_nothing(target):
    engine = build_engine(EngineSpec(drafter="none", policy="fixed"), target, None)
    scheduler = Scheduler(engine, parallel=1)
    scheduler.start()
    try:
        first = collect(scheduler, JOBS[:1])[0][-1]
        again = collect(scheduler, JOBS[:1])[0][-1]
    finally:
        scheduler.shutdown(30)
    assert again.cached_tokens == 0 and again.result.token_ids == first.result.token_ids


def test_shutdown_finishes_the_requests_in_flight(target, expected):
    engine = Engine(target, NoDrafter(), FixedPolicy(1))
    scheduler = Scheduler(engine, parallel=2)
    results: list[Finished] = []
    for prompt, n in JOBS:
        scheduler.submit(
            prompt,
            GenerationConfig(max_new_tokens=n),
            lambda e: results.append(e) if isinstance(e, Finished) else None,
        )
    scheduler.start()
    scheduler.shutdown(60)
    assert sorted(r.result.token_ids for r in results) == sorted(expected)


def test_each_plan_is_told_the_rows_the_others_add(target, monkeypatch):
    """Planned in turn: the rows of requests planned already, and for each still to plan
    as many as its recent steps had (one, before its first); tokens likewise."""
    seen: list[tuple[int, int, int, int]] = []  # (slot, tokens, rows, requests)
    yields: list[float] = []
    budget = FixedPolicy.budget

    def spying(self, state):
        seen.append((state.slot, len(state.tokens), state.sharing.rows, state.sharing.requests))
        yields.append(state.sharing.tokens)
        return budget(self, state)

    monkeypatch.setattr(FixedPolicy, "budget", spying)
    engine = build_engine(EngineSpec(drafter="ngram", policy="fixed", k=2), target, None)
    gens = [
        Generation(engine, PROMPTS[3] * 2, GenerationConfig(max_new_tokens=8), slot)
        for slot in range(SLOTS)
    ]
    for gen in gens:
        engine.begin(gen)
    before = len(seen)
    plans = engine._plan_all(gens)
    fed = [len(plan.draft.tokens) + (0 if plan.prescored else 1) for plan in plans]
    assert [s[0] for s in seen[before:]] == [0, 1, 2]
    assert [s[3] for s in seen[before:]] == [SLOTS - 1] * SLOTS
    assert [s[2] for s in seen[before:]] == [2, fed[0] + 1, fed[0] + fed[1]]
    assert any(fed), "the prompt repeats: n-gram drafts"
    assert yields[before:] == [SLOTS - 1.0] * SLOTS
    (alone,) = engine._plan_all(gens[:1])
    assert seen[-1][2:] == (0, 0) and alone.draft is not None
    for gen in gens:
        engine.end(gen)
