"""``adaspec replay --concurrency``: the recorded answers as that many requests in flight,
on a cost curve indexed by a pass's total rows (a server's shared step).

Each slot takes the next answer as soon as its last one ends (a closed loop of
``concurrency`` clients), every step is one ``Engine.step_all`` over the requests in flight,
and the scripted clock charges each pass once, by all its rows. Prefills cost nothing
here, as in the single-request replay: the ratios are decode only. The best fixed draft
length is searched over the model-free drafters, so a policy is judged against the best
choice it could have made with hindsight at each concurrency.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from adaspec.backends.base import slot_of
from adaspec.bench.methods import AdaspecMethod
from adaspec.bench.replay import BASELINE, Case, ScriptedClock, ScriptedTarget, scripted
from adaspec.config import GenerationConfig
from adaspec.engine import Engine, Generation
from adaspec.profile import CostProfile

FIXED_DRAFTERS = ("ngram", "recycling", "aded")
FIXED_KS = (1, 2, 3, 4, 6, 8)


@dataclass(frozen=True)
class LoadReplayed:
    """One method over all the cases at one concurrency."""

    method: str
    concurrency: int
    seconds: float  # scripted time from the first step to the last answer
    tokens: int
    drafted: int
    steps: int  # request-steps: each request's steps, summed

    @property
    def draft_per_step(self) -> float:
        """Draft tokens a request verified per step, on average."""
        return self.drafted / max(self.steps, 1)


def replay_load(
    method: str,
    cases: Sequence[Case],
    profile: CostProfile,
    concurrency: int,
    k: int | None = None,
) -> LoadReplayed:
    """Run the cases through one engine with ``concurrency`` slots, a new case entering a
    slot as soon as it is free. Raises if an answer leaves its script (a lossless bug)."""
    clock = ScriptedClock()
    cases, target = scripted(cases, profile, clock, slots=concurrency)
    engine = AdaspecMethod(method, target, None, k=k, clock=clock, time_costs=False).engine
    waiting = deque(cases)
    running: dict[int, tuple[Generation, Case]] = {}  # by slot
    done: list[Generation] = []
    while waiting or running:
        for slot in range(concurrency):
            if slot not in running and waiting:
                case = waiting.popleft()
                running[slot] = (_begin(engine, target, slot, case), case)
        gens = [gen for gen, _ in running.values()]
        engine.step_all(gens)
        for gen in gens:
            if gen.done:
                engine.end(gen)
                _check(method, gen, running.pop(gen.slot)[1])
                done.append(gen)
    summaries = [gen.stats.summary() for gen in done]
    return LoadReplayed(
        method,
        concurrency,
        clock.now,
        sum(len(gen.token_ids) for gen in done),
        sum(s["drafted"] for s in summaries),
        sum(len(gen.stats.steps) for gen in done),
    )


def _begin(engine: Engine, target: ScriptedTarget, slot: int, case: Case) -> Generation:
    slot_of(target, slot).play(case)
    config = GenerationConfig(max_new_tokens=len(case.answer), stop_at_eos=False)
    gen = Generation(engine, case.prompt, config, slot)
    engine.begin(gen)
    return gen


def _check(method: str, gen: Generation, case: Case) -> None:
    if gen.token_ids != case.answer:
        raise AssertionError(f"{method} left the recorded answer of question {case.question_id}")


def best_fixed(cases: Sequence[Case], profile: CostProfile, concurrency: int) -> LoadReplayed:
    """The fastest fixed draft length of any model-free drafter at this concurrency
    (named ``drafter:fixed@k``): the choice a user tuning by hand could at best make."""
    runs = [
        replay_load(f"{drafter}:fixed", cases, profile, concurrency, k)
        for drafter in FIXED_DRAFTERS
        for k in FIXED_KS
    ]
    best = min(runs, key=lambda run: run.seconds)
    k = FIXED_KS[runs.index(best) % len(FIXED_KS)]
    return LoadReplayed(
        f"{best.method}@{k}", concurrency, best.seconds, best.tokens, best.drafted, best.steps
    )


def speedups_under_load(
    methods: Sequence[str], cases: Sequence[Case], profile: CostProfile, levels: Sequence[int]
) -> dict[int, dict[str, LoadReplayed]]:
    """Per concurrency: the baseline, each method and the best fixed length, replayed."""
    out = {}
    for level in levels:
        runs = {m: replay_load(m, cases, profile, level) for m in (BASELINE, *methods)}
        fixed = best_fixed(cases, profile, level)
        out[level] = runs | {fixed.method: fixed}
    return out
