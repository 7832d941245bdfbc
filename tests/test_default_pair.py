"""The default pair end to end (the 1.5B target with the 0.5B draft) on both backends:
greedy equality with drafts and rejections asserted, and a sampling check with goodput.
Marked `integration`: run with `pytest -m integration` after `adaspec models pull`."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from adaspec import GenerationConfig, SamplingParams, load_backend
from adaspec.api import encode_prompt
from adaspec.backends import BACKENDS
from adaspec.build import EngineSpec, build_engine
from adaspec.drafters import DRAFTERS
from adaspec.errors import ModelError
from adaspec.models import DEFAULT_DRAFT, DEFAULT_TARGET, NAMED_MODELS, model_path
from adaspec.sampling import probabilities
from tests.power import ALPHA, chi_square
from tests.tiny import ClockedBackend, FakeClock

pytestmark = pytest.mark.integration
PROMPTS = [
    "Write a Python function that reverses a linked list.",
    "Summarize: speculative decoding drafts tokens cheaply and verifies them in one pass.",
]
# (backend, drafter) that cannot work there and must say so: llama.cpp runs every layer.
REFUSED = {("llama.cpp", "self")}
BACKEND_NAMES = [
    "torch",
    pytest.param(
        "llama.cpp",
        marks=pytest.mark.skipif("llama.cpp" not in BACKENDS.names(), reason="no llama.cpp"),
    ),
]


@pytest.fixture(scope="module", autouse=True)
def pulled():
    for name in (DEFAULT_TARGET, DEFAULT_DRAFT):
        if not model_path(NAMED_MODELS[name]).is_file():
            pytest.skip("the default pair is not pulled; run `adaspec models pull`")


@pytest.fixture(scope="module", params=BACKEND_NAMES)
def pair(request):
    """Each backend's pair, loaded once for all its tests (the torch target is 6 GB)."""
    target = load_backend(DEFAULT_TARGET, request.param)
    draft = load_backend(DEFAULT_DRAFT, request.param, drafting=True)
    yield request.param, target, draft
    del target, draft


@pytest.fixture(scope="module")
def plain_answers(pair):
    _, target, _ = pair
    engine = build_engine(EngineSpec(drafter="none", policy="fixed"), target, None)
    config = GenerationConfig(max_new_tokens=24)
    prompts = [encode_prompt(target.tokenizer, text, chat=True) for text in PROMPTS]
    return [(ids, engine.generate(ids, config).token_ids) for ids in prompts]


@pytest.mark.parametrize("policy", ["fixed", "goodput"])
@pytest.mark.parametrize("drafter", [name for name in DRAFTERS.names() if name != "none"])
def test_the_pair_decodes_greedily_as_plain_decoding(pair, plain_answers, drafter, policy):
    """Every drafter in the registry, chains and trees. With a fixed draft length every
    request drafts, so tokens are accepted and rejected; goodput drafts only where it pays
    on this machine (on llama.cpp, at most rarely), so there only equality is asserted."""
    backend, target, draft = pair
    if (backend, drafter) in REFUSED:
        with pytest.raises(ModelError, match="--backend torch"):
            build_engine(EngineSpec(drafter=drafter, policy=policy), target, draft)
        return
    engine = build_engine(EngineSpec(drafter=drafter, policy=policy), target, draft)
    accepted = rejected = 0
    # A drafter that learns from the target's rows (recycling) starts with nothing to
    # draft: a second round lets it draft from the first, as it would across requests.
    rounds = 2 if getattr(DRAFTERS.get(drafter), "row_top_k", 0) else 1
    for ids, want in plain_answers * rounds:
        result = engine.generate(ids, GenerationConfig(max_new_tokens=24))
        assert result.token_ids == want, (drafter, policy)
        accepted += sum(s.accepted for s in result.stats.steps)
        rejected += sum(s.drafted > s.accepted for s in result.stats.steps)
    if policy == "fixed":
        assert accepted > 0 and rejected > 0, (accepted, rejected)


def test_goodput_sampling_on_the_pair_follows_the_target(pair):
    """The first two tokens under top-k 3 sampling (9 cells), on a GPU-like clock where
    goodput drafts with the model arm: 600 requests detect TV >= 0.12 at power 0.9, a
    check of the real pair's caches and warping, not of the rule's exactness (the unit
    tests have the power for that)."""
    name, target, draft = pair
    if name == "torch":
        pytest.skip("llama.cpp runs the 600 requests in about a minute, torch in twenty")
    params = SamplingParams(1.0, top_k=3)
    prompt = target.tokenizer.encode("def fibonacci(n):")
    exact = exact_first_two(target, prompt, params)
    clock = FakeClock()
    engine = build_engine(
        EngineSpec(drafter="model", policy="goodput"),
        ClockedBackend(target, clock),
        draft,
        clock=clock,
    )
    seen: Counter[tuple[int, int]] = Counter()
    drafted = rejected = 0
    for seed in range(600):
        result = engine.generate(prompt, GenerationConfig(2, params, seed=seed))
        seen[tuple(result.token_ids)] += 1
        drafted += sum(s.drafted for s in result.stats.steps)
        rejected += sum(s.drafted > s.accepted for s in result.stats.steps)
    assert drafted > 0 and rejected > 0
    cells = list(exact)  # then one cell for any pair the target rules out
    counts = [seen[c] for c in cells] + [sum(seen.values()) - sum(seen[c] for c in cells)]
    test = chi_square(torch.tensor(counts), torch.tensor([*exact.values(), 0.0]))
    assert test.detectable_tv() < 0.13
    assert test.p_value > ALPHA, test


def exact_first_two(target, prompt: list[int], params: SamplingParams) -> dict:
    """The target's own joint of its first two tokens, {(first, second): probability} over
    the pairs it allows, scored as the engine scores them: the prompt's last row, then a
    one-token forward after each first token."""
    target.reset()
    first = probabilities(target.score_prompt(prompt)[None], params)[0].double()
    joint = {}
    for a in first.nonzero().flatten().tolist():
        target.rollback(len(prompt))
        second = probabilities(target.forward([a])[0][None], params)[0].double()
        for b in second.nonzero().flatten().tolist():
            joint[(a, b)] = float(first[a] * second[b])
    return joint
