"""The model drafter keeps its own cache in step with the committed text cheaply."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from adaspec.budget import Budget
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.drafters.model import SINKS, ModelDrafter, draft_view
from adaspec.drafters.options import DrafterOptions
from adaspec.engine import Engine
from adaspec.errors import ConfigError
from adaspec.policies.fixed import FixedPolicy
from adaspec.state import DecodeState
from tests.tiny import ar_tokens, backend, perturbed, tiny_model


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


def test_a_draft_window_keeps_the_sinks_and_at_most_the_window_of_the_tail():
    text = list(range(100))
    assert draft_view(text, 0) == text and draft_view(text[:20], 16) == text[:20]
    views = [draft_view(text[:n], 16) for n in range(21, 100)]
    for n, view in zip(range(21, 100), views, strict=True):
        assert view[:SINKS] == text[:SINKS] and view[-1] == n - 1
        assert 8 < len(view) - SINKS <= 16  # the window's start moves by half a window
    assert len({view[SINKS] for view in views}) < len(views) // 4  # a window is re-fed rarely


def test_a_windowed_draft_is_lossless_and_its_cache_stays_bounded():
    """Greedy ids equal plain decoding's with the draft seeing 4 + 8 tokens of a text that
    grows past 60; the draft's cache never holds more than the view and a draft."""
    target = backend(tiny_model())
    prompt = [5, 9, 13, 21, 8, 5, 9, 13, 40, 2, 17, 3, 5, 9, 13, 21, 8, 5, 9, 13, 40, 2]
    expected = ar_tokens(target, prompt, 40)
    drafter = ModelDrafter(backend(perturbed(target.model, 0.3)), target.vocab_size, window=8)
    lengths = []
    draft_backend = drafter.backend
    forward = draft_backend.forward

    def watched(tokens, parents=None):
        lengths.append(draft_backend.length + len(tokens))
        return forward(tokens, parents)

    draft_backend.forward = watched
    engine = Engine(target, drafter, FixedPolicy(3))
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=40))
    assert result.token_ids == expected
    assert result.stats.summary()["accepted"] > 0
    assert lengths and max(lengths) <= SINKS + 8 + 3


def test_a_negative_draft_window_is_refused_with_the_flag_named():
    with pytest.raises(ConfigError, match="--draft-window must be 0 or more"):
        DrafterOptions(draft_window=-1)
