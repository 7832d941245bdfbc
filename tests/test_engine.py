"""The engine end to end on tiny random models: losslessness, greedy and sampled."""

from __future__ import annotations

import pytest
import torch

from adaspec.budget import Budget
from adaspec.build import EngineSpec, build_engine
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.draft import Draft
from adaspec.drafters import DRAFTERS as DRAFTER_NAMES
from adaspec.drafters.base import OpenByCopy
from adaspec.drafters.model import ModelDrafter
from adaspec.drafters.none import NoDrafter
from adaspec.engine import Engine
from adaspec.errors import ConfigError
from adaspec.policies import POLICIES as POLICY_NAMES
from adaspec.policies.fixed import FixedPolicy
from adaspec.policies.goodput import GoodputPolicy
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome, Unverified
from tests.power import ALPHA, chi_square
from tests.tiny import (
    DRAFTERS,
    POLICIES,
    ClockedBackend,
    FakeClock,
    ar_tokens,
    backend,
    perturbed,
    tiny_model,
)

PROMPTS = [[5], [3, 17, 42, 8], [9, 9, 9, 9, 9, 9], [11, 2, 30, 4, 50, 6, 70, 8, 90, 1, 2, 3]]
LENGTHS = [1, 2, 9, 40]


@pytest.fixture(scope="module")
def target():
    return backend(tiny_model(seed=0))


MATRIX = [(d, p) for d in DRAFTER_NAMES.names() for p in POLICY_NAMES.names()]


def argmax_loop(model, prompt: list[int], n: int) -> list[int]:
    """The reference: greedy decoding by a plain argmax over the whole text each step,
    with no engine and no cache."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.fixture(scope="module")
def expected(target):
    return {(i, n): argmax_loop(target.model, p, n) for i, p in enumerate(PROMPTS) for n in LENGTHS}


@pytest.mark.parametrize(("drafter", "policy"), MATRIX)
def test_greedy_equals_an_argmax_loop(target, expected, drafter, policy):
    """Every drafter x policy in the registries, on a clock where drafting pays, with a
    draft model that agrees with the target only in part: each must have drafted, had
    tokens accepted and tokens rejected, and still return the argmax loop's ids."""
    clock = FakeClock()
    draft = backend(perturbed(target.model, 0.3))
    engine = build_engine(
        EngineSpec(drafter=drafter, policy=policy),
        ClockedBackend(target, clock),
        draft,
        clock=clock,
    )
    accepted = rejected = 0
    for (i, n), want in expected.items():
        result = engine.generate(PROMPTS[i], GenerationConfig(max_new_tokens=n))
        assert result.token_ids == want, f"prompt {i}, {n} tokens"
        assert result.stats.new_tokens == len(want)
        accepted += sum(s.accepted for s in result.stats.steps)
        rejected += sum(s.drafted > s.accepted for s in result.stats.steps)
    if drafter != "none":  # the baseline drafts nothing; every other one must be tested
        assert accepted > 0 and rejected > 0, (accepted, rejected)


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("drafter", list(DRAFTERS))
def test_greedy_variants_equal_autoregressive(target, expected, drafter, policy):
    """Hand-picked variants the registry matrix leaves out (a self draft, an unrelated
    one, several draft lengths and thresholds), on the wall clock."""
    engine = Engine(target, DRAFTERS[drafter](target), POLICIES[policy]())
    accepted = 0
    for (i, n), want in expected.items():
        result = engine.generate(PROMPTS[i], GenerationConfig(max_new_tokens=n))
        assert result.token_ids == want, f"prompt {i}, {n} tokens"
        accepted += result.stats.summary()["accepted"]
    if drafter == "model-self" and not policy.startswith("confidence"):
        assert accepted > 0  # a draft identical to the target must be accepted


def test_self_draft_is_fully_accepted(target):
    engine = Engine(target, DRAFTERS["model-self"](target), FixedPolicy(4))
    stats = engine.generate(PROMPTS[1], GenerationConfig(max_new_tokens=40)).stats.summary()
    assert stats["acceptance_rate"] == 1.0
    assert stats["mean_accepted"] == 5.0  # 4 drafted + 1 bonus per target pass


@pytest.mark.parametrize("record_rows", [0, 3])
def test_each_step_records_how_sure_the_target_was_of_its_own_token(target, record_rows):
    """The target's softmax maximum at the row its own token came from: with a self-draft
    of 4 fully accepted, the row after the prompt and those 4 tokens (read off the rows'
    top-k where they are kept)."""
    engine = Engine(target, DRAFTERS["model-self"](target), FixedPolicy(4), record_rows=record_rows)
    result = engine.generate(PROMPTS[1], GenerationConfig(max_new_tokens=11))
    first = result.stats.steps[0]
    assert first.accepted == 4
    target.reset()
    rows = target.forward([*PROMPTS[1], *result.token_ids[:4]])
    assert first.target_top == pytest.approx(float(torch.softmax(rows[-1], -1).max()), rel=1e-4)
    assert all(0.0 < s.target_top <= 1.0 for s in result.stats.steps)


class RepeatsLast(OpenByCopy):
    """Drafts the last token twice: right exactly where the text repeats a token."""

    name = "repeats-last"
    needs_draft_model = uses_draft_model = False
    row_top_k = 0

    def start(self, state: DecodeState) -> None:
        pass

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        return Draft([state.tokens[-1]] * 2, None, [0.5, 0.5], self.name)

    def observe(self, outcome: StepOutcome) -> None:
        pass


class VerifiesNothing(FixedPolicy):
    def trim(self, draft: Draft) -> int:
        return 0


def test_a_draft_a_plain_step_left_is_judged_as_the_text_goes_on(target):
    """A draft a plain step did not verify waits until the committed text has left it or
    reached its end, then is judged node by node as a verify would have; only then does
    its drafter's next one wait (the last step has no room to draft)."""
    prompt = PROMPTS[2]
    engine = Engine(target, RepeatsLast(), VerifiesNothing(4))
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=24))
    text = [*prompt, *result.token_ids]
    steps, waiting, seen = result.stats.steps, None, set()
    for i, step in enumerate(steps):
        at = len(prompt) + i  # the token this step committed
        if waiting is None and i < len(steps) - 1:
            waiting = at  # the draft guesses text[at - 1] twice from here
        expected = ()
        if waiting is not None:
            guessed = text[waiting : at + 1][:2]
            matched = next((k for k, t in enumerate(guessed) if t != text[waiting - 1]), None)
            if matched is not None or len(guessed) == 2:
                hits = len(guessed) if matched is None else matched
                judged = min(hits + 1, 2)
                tried = tuple((0.5, k < hits) for k in range(judged))
                expected = (Unverified("repeats-last", tried, hits, judged),)
                seen.add((hits, at - waiting))
                waiting = None
        assert step.drafted == 0 and step.unverified == expected, i
    assert {(2, 1), (0, 0)} <= seen  # judged a step later, and at once


def test_autoregressive_mean_accepted_is_one(target):
    engine = Engine(target, NoDrafter(), FixedPolicy(4))
    stats = engine.generate(PROMPTS[0], GenerationConfig(max_new_tokens=12)).stats.summary()
    assert stats["mean_accepted"] == 1.0
    assert stats["target_forwards"] == 12 and stats["drafted"] == 0


@pytest.mark.parametrize("drafter", ["ngram", "model-self", "model-close"])
def test_greedy_stops_at_eos_like_autoregressive(drafter):
    plain = tiny_model(seed=0)
    free = ar_tokens(backend(plain), PROMPTS[3], 30)
    eos = free[10]  # a token the target emits mid-way, mid-draft for the spec runs
    target = backend(tiny_model(seed=0, eos=eos))
    want = ar_tokens(target, PROMPTS[3], 30)
    assert want[-1] == eos and len(want) <= 11
    engine = Engine(target, DRAFTERS[drafter](target), FixedPolicy(6))
    result = engine.generate(PROMPTS[3], GenerationConfig(max_new_tokens=30))
    assert result.token_ids == want
    assert result.finish_reason == "stop"


class CountingBackend:
    """Wraps a backend and counts the positions its forwards run."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.forwards: list[int] = []

    def forward(self, tokens, parents=None):
        self.forwards.append(len(tokens))
        return self.inner.forward(tokens, parents)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_the_first_token_comes_from_the_prefill(target):
    """Like plain decoding elsewhere: the prompt's prefill scores the first new token, so n
    tokens take n - 1 forwards of one position, and a first draft runs alone."""
    counting = CountingBackend(target)
    plain = Engine(counting, NoDrafter(), FixedPolicy(1))
    result = plain.generate(PROMPTS[3], GenerationConfig(max_new_tokens=10))
    assert counting.forwards == [1] * 9
    assert result.stats.summary()["target_forwards"] == 10  # the prefill counts as one
    counting.forwards.clear()
    spec = Engine(counting, DRAFTERS["model-self"](target), FixedPolicy(4))
    spec.generate(PROMPTS[3], GenerationConfig(max_new_tokens=10))
    assert counting.forwards == [4, 5]  # 4 drafted (no last token to feed), then 4 + 1


def test_stream_yields_what_generate_returns(target):
    engine = Engine(target, DRAFTERS["model-close"](target), FixedPolicy(3))
    config = GenerationConfig(max_new_tokens=25)
    chunks = list(engine.stream(PROMPTS[1], config))
    assert [t for chunk in chunks for t in chunk] == engine.generate(PROMPTS[1], config).token_ids
    assert all(chunks)


def test_empty_prompt_and_context_overflow(target):
    engine = Engine(target, NoDrafter(), FixedPolicy(1))
    with pytest.raises(ConfigError, match="empty"):
        engine.generate([], GenerationConfig(max_new_tokens=4))
    with pytest.raises(ConfigError, match="context"):
        engine.generate([1] * 200, GenerationConfig(max_new_tokens=100))


def joint_first_two(logits_fn, vocab: int) -> torch.Tensor:
    """Exact target distribution of the first two generated tokens: [vocab, vocab]."""
    p1 = torch.softmax(logits_fn([]), -1)
    return torch.stack([p1[a] * torch.softmax(logits_fn([a]), -1) for a in range(vocab)])


def sampled_joint(engine: Engine, prompt: list[int], vocab: int, n: int) -> torch.Tensor:
    counts = torch.zeros(vocab, vocab)
    params = SamplingParams(temperature=1.0)
    for seed in range(n):
        ids = engine.generate(prompt, GenerationConfig(3, params, seed=seed)).token_ids
        counts[ids[0], ids[1]] += 1
    return counts


@pytest.fixture(scope="module")
def sharp_pair():
    """Vocabulary 8; the draft is a different random model, made overconfident."""
    target = tiny_model(seed=11, vocab=8, hidden=16, layers=1, init=0.15)
    draft = tiny_model(seed=12, vocab=8, hidden=16, layers=1, init=0.6)
    return backend(target), backend(draft)


def test_speculative_sampling_through_a_real_cache_matches_the_target(sharp_pair):
    """The synthetic pair of test_lossless.py has no KV cache to roll back; this one does.
    1500 samples detect TV >= 0.13 at power 0.9 (pooled cells included): a check of the cache under
    sampling, not of the rule's exactness (test_lossless.py has the power for that)."""
    target, draft = sharp_pair
    prompt = [1, 4, 2]

    def logits(extra: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return target.model(torch.tensor([prompt + extra])).logits[0, -1].double()

    exact = joint_first_two(logits, 8)
    with torch.no_grad():
        q1 = torch.softmax(draft.model(torch.tensor([prompt])).logits[0, -1].double(), -1)
    assert 0.5 * float((q1 - exact.sum(1)).abs().sum()) > 0.3  # the draft disagrees strongly
    clock = FakeClock()
    engine = Engine(
        ClockedBackend(target, clock), ModelDrafter(draft, 8), GoodputPolicy(2), clock=clock
    )
    counts = sampled_joint(engine, prompt, 8, n=1500)
    test = chi_square(counts, exact)
    assert test.detectable_tv() < 0.13
    assert test.p_value > ALPHA, test


def test_text_and_keyword_options_as_hf_pipelines_take_them(model_dir):
    from adaspec import load
    from adaspec.api import encode_prompt

    engine = load(model_dir, drafter="ngram", policy="heuristic")
    ids = encode_prompt(engine.target.tokenizer, "def reverse(head):", chat=True)
    want = engine.generate(ids, GenerationConfig(max_new_tokens=8)).token_ids
    assert engine.generate("def reverse(head):", chat=True, max_new_tokens=8).token_ids == want
    streamed = engine.stream("def reverse(head):", chat=True, max_new_tokens=8)
    assert [t for new in streamed for t in new] == want
    sampled = engine.generate(ids, max_new_tokens=8, temperature=0.7, top_p=0.9, seed=3)
    assert (
        sampled.token_ids
        == engine.generate(ids, max_new_tokens=8, temperature=0.7, top_p=0.9, seed=3).token_ids
    )
    with pytest.raises(ConfigError, match="unknown option"):
        engine.generate("hi", max_tokens=8)
    with pytest.raises(ConfigError, match="as text"):
        engine.generate(ids, chat=True)
