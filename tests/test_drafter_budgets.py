"""What a drafter is asked for: a drafter used alone gets its own plan from goodput, and
under sampling the engine never chooses among drafts by their sampled tokens."""

from __future__ import annotations

from dataclasses import replace

import torch

from adaspec.budget import Budget
from adaspec.build import EngineSpec, build_engine
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.draft import Draft
from adaspec.drafters.ngram import NgramDrafter
from adaspec.engine import Engine, ask_drafters
from adaspec.policies.goodput import GoodputPolicy
from adaspec.state import DecodeState
from tests.table import REPEATING, Clock, TableBackend, cyclic_target, random_table


class RecordingNgram(NgramDrafter):
    """The n-gram drafter, keeping each budget it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.budgets: list[int] = []

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        self.budgets.append(budget.depth_limit)
        return super().propose(state, budget)


def test_a_lookup_used_alone_drafts_as_far_as_goodputs_plan():
    """Before, a drafter other than auto got the probe budget (2 tokens) every step
    whatever the plan said; on a GPU-like clock with every copy accepted, goodput plans
    drafts to its k."""
    clock = Clock()
    drafter = RecordingNgram()
    engine = Engine(cyclic_target(clock), drafter, GoodputPolicy(8), clock=clock)
    for _ in range(3):
        engine.generate(REPEATING, GenerationConfig(max_new_tokens=40))
    assert max(drafter.budgets) == 8


class CountingBackend(TableBackend):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.forwards = 0

    def forward(self, tokens, parents=None):
        self.forwards += 1
        return super().forward(tokens, parents)


def test_a_draft_model_the_plan_rules_out_pays_no_forwards():
    """Where a draft token costs half a target step and verifying k rows costs k steps (a
    CPU on llama.cpp), goodput's plan for the model is no draft: after its first probes it
    runs no draft forward at all (before, it drafted 2 tokens every step)."""
    clock = Clock()
    target = TableBackend(random_table(4, 2.0, seed=1), clock, lambda n: 10.0 * n)
    draft = CountingBackend(random_table(4, 2.0, seed=2), clock, lambda n: 5.0, label="d")
    engine = build_engine(EngineSpec(drafter="model", policy="goodput"), target, draft, clock=clock)
    for _ in range(4):
        engine.generate([0, 1, 2], GenerationConfig(max_new_tokens=30))
    draft.forwards = 0
    result = engine.generate([0, 1, 2], GenerationConfig(max_new_tokens=30))
    assert draft.forwards == 0
    assert result.stats.summary()["drafted"] == 0


class FixedDraft:
    """An arm that always proposes the same draft."""

    row_top_k = 0

    def __init__(self, draft: Draft) -> None:
        self.draft = draft

    def start(self, state: DecodeState) -> None:
        pass

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        return self.draft

    def observe(self, outcome) -> None:
        pass


class Worth:
    """A policy that values drafts by their source."""

    def __init__(self, worth: dict[str, float]) -> None:
        self.worth = worth

    def value(self, draft: Draft) -> float:
        return self.worth[draft.source]


def test_a_sampled_draft_asked_for_is_taken_whatever_its_tokens_are_worth():
    """The choice to ask the model arm is made on promises before it samples; comparing
    its sampled tokens' value with the lookup's draft afterwards would make the verified
    draft depend on the sampled tokens."""
    lookup = Draft([1, 2], None, [0.6, 0.6], "ngram")
    sampled = Draft([3], torch.full((1, 4), 0.25), [0.25], "model")
    policy = Worth({"ngram": 2.0, "model": 1.5, "": 1.0})  # the sampled draft looks worse
    per = {"ngram": Budget(2, promise=2.0), "model": Budget(2, promise=3.0)}
    budget = Budget(2, plain=1.0, ask=("ngram", "model"), per_drafter=per)
    state = DecodeState([0, 1], 2, SamplingParams(1.0), torch.Generator())
    arms = {"ngram": FixedDraft(lookup), "model": FixedDraft(sampled)}
    assert ask_drafters(arms, state, budget, policy).draft is sampled
    greedy_lookup = Draft([1, 2], None, [0.6, 0.6], "ngram")
    greedy_model = Draft([3], None, [0.25], "model")  # greedy: a function of the text
    arms = {"ngram": FixedDraft(greedy_lookup), "model": FixedDraft(greedy_model)}
    assert ask_drafters(arms, state, budget, policy).draft is greedy_lookup


def test_a_drafter_promising_less_than_the_draft_in_hand_is_not_asked():
    lookup = Draft([1, 2], None, [0.6, 0.6], "ngram")
    model = FixedDraft(Draft([3], None, [0.9], "model"))
    per = {"ngram": Budget(2, promise=1.0), "model": Budget(2, promise=1.5)}
    budget = Budget(2, plain=1.0, ask=("ngram", "model"), per_drafter=per)
    state = DecodeState([0, 1], 2, SamplingParams(), torch.Generator())
    arms = {"ngram": FixedDraft(lookup), "model": model}
    policy = Worth({"ngram": 2.0, "model": 1.8, "": 1.0})
    assert ask_drafters(arms, state, budget, policy).draft is lookup  # 1.5 < 2.0: not asked
    policy = Worth({"ngram": 1.2, "model": 1.8, "": 1.0})
    assert ask_drafters(arms, state, budget, policy).draft is model.draft  # asked, and worth more
    assert ask_drafters(arms, state, replace(budget, ask=()), policy).draft.tokens == []
