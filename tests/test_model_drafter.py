"""The model drafter keeps its own cache in step with the committed text cheaply."""

from __future__ import annotations

from dataclasses import replace

import torch

from adaspec.budget import Budget
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.drafters.model import ModelDrafter
from adaspec.engine import Engine
from adaspec.policies.fixed import FixedPolicy
from adaspec.state import DecodeState
from tests.tiny import ar_tokens, backend, tiny_model


class CountingBackend:
    """A draft backend that counts the forward passes run through it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.passes = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def prefill(self, tokens):
        self.passes += bool(tokens)
        return self.inner.prefill(tokens)

    def score_prompt(self, tokens):
        self.passes += 1
        return self.inner.score_prompt(tokens)

    def forward(self, tokens, parents=None):
        self.passes += 1
        return self.inner.forward(tokens, parents)


def test_a_fully_accepted_draft_costs_one_pass_per_drafted_token():
    """Drafting for itself, every draft of 3 is accepted: the next proposal feeds the last
    drafted token and the target's bonus token in the same pass that scores the first new
    draft token, so a step costs 3 passes (the first step's first pass is the prompt's)."""
    target = backend(tiny_model(seed=0))
    draft = CountingBackend(backend(tiny_model(seed=0)))
    engine = Engine(target, ModelDrafter(draft, target.vocab_size), FixedPolicy(3))
    prompt = [3, 17, 42, 8]
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=41))
    assert result.token_ids == ar_tokens(target, prompt, 41)
    drafting = [s for s in result.stats.steps if s.drafted]
    assert len(drafting) == 10 and all(s.accepted == 3 for s in drafting)
    assert draft.passes == 3 * len(drafting)  # two passes more per step before


def test_a_budgets_stop_rule_ends_the_draft_before_its_next_pass():
    """The policy may stop a draft early from the confidences so far: the drafter pays no
    pass for a token it will not draft, and the output is still the target's."""
    target = backend(tiny_model(seed=0))
    draft = CountingBackend(backend(tiny_model(seed=1)))
    drafter = ModelDrafter(draft, target.vocab_size)
    prompt = [3, 17, 42, 8]
    state = DecodeState(list(prompt), len(prompt), SamplingParams(), torch.Generator())
    drafter.start(state)
    proposed = drafter.propose(state, Budget(6, min_path=(0.0, 0.0, 1.1)))
    assert len(proposed.tokens) == 2 and draft.passes == 2
    stopping = StopAfter(FixedPolicy(6), 2)
    result = Engine(target, ModelDrafter(draft, target.vocab_size), stopping).generate(
        prompt, GenerationConfig(max_new_tokens=30)
    )
    assert result.token_ids == ar_tokens(target, prompt, 30)
    assert max(s.drafted for s in result.stats.steps) == 2


class StopAfter:
    """A policy whose budgets stop drafting after ``n`` tokens by the stop rule alone."""

    def __init__(self, inner, n: int) -> None:
        self.inner = inner
        self.n = n

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def open(self, state, arms):
        return StopAfter(self.inner.open(state, arms), self.n)

    def budget(self, state):
        floors = (0.0,) * self.n + (1.1,)  # no path is accepted with probability 1.1
        return replace(self.inner.budget(state), min_path=floors)
