"""Lossless under sampling, for every drafter x policy in the registries.

Each test samples the first three tokens (the bonus token included) many times through the
engine on a synthetic pair (tests/table.py) and compares their joint with the target's
own, computed exactly by enumeration. Every test states its sample size and the smallest
total-variation error it detects (tests/power.py); controls, lossy on purpose, must fail
the very same test.
"""

from __future__ import annotations

import math

import pytest
import torch

from adaspec import verify as verify_module
from adaspec.build import build_engine
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.drafters import DRAFTERS
from adaspec.engine import Engine
from adaspec.policies import POLICIES
from tests.power import ALPHA, POWER, chi_square
from tests.table import Clock, TableBackend, exact_joint, random_table

VOCAB = 4
# Token 2 ends the prompt unseen before, so the lookup has no match at first and auto's
# goodput asks its model arm; later tokens all have matches.
PROMPT = [0, 1, 2]
SAMPLES = 7000  # per configuration: about 3 s at most here
MAX_TV = 0.05  # every test must detect a total-variation error this large (power 0.9)
SETTINGS = {
    "t0.7-topk3": SamplingParams(0.7, top_k=3),
    "t1.3-topp0.9": SamplingParams(1.3, top_p=0.9),
}
MATRIX = [(d, p) for d in DRAFTERS.names() for p in POLICIES.names()]


def synthetic_pair(clock: Clock) -> tuple[TableBackend, TableBackend]:
    """A target, and a draft that agrees with it in part; on a GPU-like clock where
    verifying more rows is nearly free, so every policy drafts, and a drafted token costs
    a tenth of a target step (goodput prices it as a paid drafter, with a stop rule)."""
    table = random_table(VOCAB, 1.5, seed=1)
    target = TableBackend(table, clock, label="target", weight_bytes=1000)
    noisy = table + random_table(VOCAB, 1.0, seed=2)
    draft = TableBackend(noisy, clock, lambda n: 1.0, label="draft", weight_bytes=100)
    return target, draft


def sample_first_three(
    engine: Engine, prompt: list[int], params: SamplingParams, samples: int = SAMPLES
) -> tuple[torch.Tensor, int, int]:
    """Counts [vocab, vocab, vocab] of the first three tokens over ``samples`` requests
    (seeds 0..samples-1, so a run is reproducible), the tokens verified and rejected."""
    vocab = engine.target.vocab_size
    counts = torch.zeros(vocab, vocab, vocab)
    verified = rejected = 0
    for seed in range(samples):
        result = engine.generate(prompt, GenerationConfig(3, params, seed=seed))
        counts[tuple(result.token_ids)] += 1
        verified += sum(s.drafted for s in result.stats.steps)
        rejected += sum(s.drafted > s.accepted for s in result.stats.steps)
    return counts, verified, rejected


def first_three_test(drafter: str, policy: str, params: SamplingParams):
    clock = Clock()
    target, draft = synthetic_pair(clock)
    engine = build_engine(target, draft, drafter, policy, clock=clock)
    counts, verified, rejected = sample_first_three(engine, PROMPT, params)
    return chi_square(counts, exact_joint(target, PROMPT, params, 3)), verified, rejected


def test_the_tests_detect_a_few_percent():
    """What SAMPLES buys on the joint of three tokens at the settings used (27 and up to
    64 cells): an error of total variation 0.041 (top-k 3) or 0.048 (64 cells) is found
    with probability 0.9 at level 1e-3."""
    uniform = torch.full((VOCAB,) * 3, 1.0 / VOCAB**3)
    test = chi_square(uniform * SAMPLES, uniform)
    assert test.dof == 63 and test.detectable_tv() < MAX_TV
    assert math.isclose(test.detectable_tv(), 0.048, abs_tol=0.002)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize(("drafter", "policy"), MATRIX)
def test_first_three_tokens_follow_the_target(drafter, policy, setting):
    test, verified, rejected = first_three_test(drafter, policy, SETTINGS[setting])
    detectable = test.detectable_tv()
    assert detectable < MAX_TV, f"{SAMPLES} samples detect only TV >= {detectable:.3f}"
    assert test.p_value > ALPHA, f"{test}: detects TV >= {detectable:.3f} at power {POWER}"
    if drafter != "none":  # the baseline drafts nothing; every other one must be tested
        assert verified > 0 and rejected > 0, (verified, rejected)


def keep_q_one_row_late(verify):
    """A lossy rule: token i is judged against the draft's row for token i - 1."""

    def wrong_row(logits, tree, probs, params, generator):
        shifted = probs.roll(1, dims=0) if probs is not None else None
        return verify(logits, tree, shifted, params, generator)

    return wrong_row


def verify_only_a_drafted_zero(self, proposal) -> int:
    """A lossy rule: a draft is verified only when its first token is 0."""
    return len(proposal.tokens) if proposal.tokens[:1] == [0] else 0


CONTROLS = {
    "resample-from-p": ("adaspec.verify.residual", lambda p, q: p),
    "wrong-q-row": ("adaspec.engine.verify_tree", keep_q_one_row_late(verify_module.verify_tree)),
    "token-dependent": ("adaspec.engine.Engine._to_verify", verify_only_a_drafted_zero),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("control", list(CONTROLS))
def test_a_lossy_rule_fails_the_same_test(control, setting, monkeypatch):
    target, lossy = CONTROLS[control]
    monkeypatch.setattr(target, lossy)
    test, verified, _ = first_three_test("model", "fixed", SETTINGS[setting])
    assert verified > 0
    assert test.p_value < ALPHA, f"the control {control} passed: {test}"


def rows(*probabilities: tuple[float, ...]) -> torch.Tensor:
    """Logits [vocab] for each next-token distribution given (zeros allowed)."""
    return torch.tensor(probabilities, dtype=torch.float64).clamp_min(1e-9).log()


def trim_sensitive_pair(clock: Clock) -> tuple[TableBackend, TableBackend]:
    """A pair on which choosing the verified prefix by look-ahead over sampled tokens is
    biased (vocabulary 4, each row depends on the last token only, prompt [3]).

    After the prompt the target says (0.5, 0.5), the draft (0.7, 0.3). A drafted 0 is
    followed by a draft row sure of itself (0.997) that the target agrees with; a drafted
    1 by a uniform draft row that the target rejects. On a request's first step the
    prefill gave the plain token for free, so any draft costs a whole forward and must
    yield more than one token in expectation: goodput's look-ahead verifies a draft
    starting 0 whole (about 0.7 * (1 + 0.99) > 1), but nothing of one starting 1 (0.7 *
    (1 + 0.28) < 1). The first token is then verified only when it is 0, and comes out 0
    with probability 0.7 * 0.5 / 0.7 + 0.3 * 0.5 = 0.65, not 0.5."""
    target_rows = rows(
        (0.97, 0.01, 0.01, 0.01), (0.01, 0.97, 0.01, 0.01), (0.25,) * 4, (0.5, 0.5, 0, 0)
    )
    draft_rows = rows((0.997, 0.001, 0.001, 0.001), (0.25,) * 4, (0.25,) * 4, (0.7, 0.3, 0, 0))

    def by_last_token(table: torch.Tensor) -> torch.Tensor:
        return table[None].expand(VOCAB, VOCAB, VOCAB).clone()  # [before, last, vocab]

    def three_rows_for_one(n: int) -> float:
        return 10.0 if n <= 3 else 30.0 + n

    target = TableBackend(by_last_token(target_rows), clock, three_rows_for_one, "target")
    draft = TableBackend(by_last_token(draft_rows), None, label="draft", weight_bytes=100)
    return target, draft


def goodput_on_the_trim_sensitive_pair() -> tuple[object, int]:
    clock = Clock()
    target, draft = trim_sensitive_pair(clock)
    engine = build_engine(target, draft, "model", "goodput", clock=clock)
    params = SamplingParams(1.0)
    counts, verified, _ = sample_first_three(engine, [3], params, samples=6000)
    return chi_square(counts, exact_joint(target, [3], params, 3)), verified


def test_goodput_never_cuts_a_sampled_draft_by_its_own_tokens():
    """The bug of issue 24: goodput chose the prefix of a sampled draft to verify from
    every drafted token's confidence, so whether token 1 was verified depended on token
    1's value. 6000 samples detect TV >= 0.044 at power 0.9 (pooled cells included)."""
    test, verified = goodput_on_the_trim_sensitive_pair()
    assert verified > 0
    assert test.detectable_tv() < 0.05
    assert test.p_value > ALPHA, test


def test_trimming_a_sampled_draft_by_look_ahead_fails_the_same_test(monkeypatch):
    """The old rule (the policy's look-ahead over every drafted token, sampled or not)
    restored: the test above must fail."""
    monkeypatch.setattr(Engine, "_to_verify", lambda self, proposal: self.policy.trim(proposal))
    test, verified = goodput_on_the_trim_sensitive_pair()
    assert verified > 0
    assert test.p_value < ALPHA, test
