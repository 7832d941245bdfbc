"""The model drafter keeps its own cache in step with the committed text cheaply."""

from __future__ import annotations

from adaspec.config import GenerationConfig
from adaspec.drafters.model import ModelDrafter
from adaspec.engine import Engine
from adaspec.policies.fixed import FixedPolicy
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

    def forward(self, tokens):
        self.passes += 1
        return self.inner.forward(tokens)


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
