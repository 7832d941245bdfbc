"""The ``self`` drafter: the target's first layers, its own norm and head, on its own cache."""

from __future__ import annotations

import pytest
import torch

from adaspec.config import GenerationConfig, SamplingParams
from adaspec.drafters.self_draft import ExitChoice, SelfDrafter
from adaspec.engine import Engine
from adaspec.errors import ModelError
from adaspec.policies.fixed import FixedPolicy
from adaspec.policies.goodput import GoodputPolicy
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome
from tests.tiny import ClockedBackend, FakeClock, ar_tokens, backend, tiny_model

PROMPT = [5, 9, 13, 21, 8, 5, 9, 13, 40, 2]


def exit_logits_by_hand(model, tokens: list[int], layer: int) -> torch.Tensor:
    """What exiting after ``layer`` layers means, from a plain forward's hidden states."""
    out = model(input_ids=torch.tensor([tokens]), output_hidden_states=True)
    if layer == model.config.num_hidden_layers:
        return out.logits[0, -1]
    return model.lm_head(model.model.norm(out.hidden_states[layer][0, -1]))


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
@pytest.mark.parametrize("prefilled", [True, False])
def test_an_exit_scores_as_the_models_first_layers_and_leaves_the_cache(layer, prefilled):
    """With the whole prompt cached (after a prefill) or all but its last token (after a
    step), an exit's rows are those of the first layers (all of them: the model's own
    logits), a chain of calls included; the cache is bit for bit as it was after."""
    target = backend(tiny_model(layers=4))
    held = PROMPT if prefilled else PROMPT[:-1]
    target.prefill(held)
    before = [(layer_.keys.clone(), layer_.values.clone()) for layer_ in target._cache.layers]
    with target.early_exit(layer) as run, torch.inference_mode():
        first = run(PROMPT)
        second = run([*PROMPT, 17])
        third = run([*PROMPT, 17, 3])
    with torch.inference_mode():
        for got, text in ((first, PROMPT), (second, [*PROMPT, 17]), (third, [*PROMPT, 17, 3])):
            torch.testing.assert_close(got, exit_logits_by_hand(target.model, text, layer))
    assert target.length == len(held)
    for (keys, values), layer_ in zip(before, target._cache.layers, strict=True):
        assert torch.equal(keys, layer_.keys) and torch.equal(values, layer_.values)


def test_greedy_self_drafting_is_token_identical_to_plain_decoding():
    target = backend(tiny_model(layers=4))
    expected = ar_tokens(target, PROMPT, 40)
    for policy in (FixedPolicy(3), GoodputPolicy(6)):
        clock = FakeClock()
        timed = ClockedBackend(target, clock)
        engine = Engine(timed, SelfDrafter.create(timed, None), policy, clock=clock)
        result = engine.generate(PROMPT, GenerationConfig(max_new_tokens=40))
        assert result.token_ids == expected
        assert result.stats.summary()["drafted"] > 0


def test_a_sampled_self_draft_carries_the_exits_rows():
    target = backend(tiny_model(layers=4))
    drafter = SelfDrafter.create(target, None)
    state = DecodeState(list(PROMPT), len(PROMPT), SamplingParams(0.8), torch.Generator())
    target.prefill(PROMPT[:-1])
    draft = drafter.open(state).propose(state, FixedPolicy(3).budget(state))
    assert len(draft.tokens) == 3 and draft.probs is not None
    assert draft.probs.shape == (3, target.vocab_size)
    assert target.length == len(PROMPT) - 1


class OneLayerBackend:
    name, label = "llama.cpp", "model.gguf"


def test_a_backend_without_a_partial_forward_is_refused_with_the_way_out():
    with pytest.raises(ModelError, match="--backend torch"):
        SelfDrafter.create(OneLayerBackend(), None)


def test_the_exit_choice_moves_to_the_layer_whose_tokens_are_accepted():
    """Exits tried in turn, cheapest first (optimism), until one whose drafts are all
    accepted is found, then kept (a dearer exit cannot beat it); the control, nothing ever
    accepted, settles on the cheapest exit instead."""
    choice, layers = ExitChoice(28), []
    good = choice.exits[-2]
    for _ in range(300):
        exit = choice.choose(4)
        layers.append(exit)
        choice.observe(exit, 4, 4 if exit == good else 0)
    assert set(choice.exits[:-1]) <= set(layers[:60])
    assert layers[-100:].count(good) >= 80, layers[-100:]
    control = ExitChoice(28)
    for _ in range(300):
        exit = control.choose(4)
        control.observe(exit, 1, 0)
    assert control.choose(4) == control.exits[0]


def test_the_drafter_learns_only_from_its_own_judged_drafts():
    target = backend(tiny_model(layers=4))
    drafter = SelfDrafter.create(target, None)
    state = DecodeState(list(PROMPT), len(PROMPT), SamplingParams(), torch.Generator())
    request = drafter.open(state)
    request.exit = drafter.choice.exits[0]
    request.observe(StepOutcome(3, 1, 2, 0.0, 0.1, drafter="ngram", proposed=3))
    assert drafter.choice.judged[request.exit] == 0.0
    request.observe(StepOutcome(3, 1, 2, 0.0, 0.1, drafter="self", proposed=3))
    assert drafter.choice.judged[request.exit] == 2.0  # node 0 accepted, node 1 judged
    assert drafter.choice.accepted[request.exit] == 1.0
