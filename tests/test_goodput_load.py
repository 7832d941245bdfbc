"""Goodput beside other requests (SmartSpec): a request's draft is priced at what its rows
add to the pass the others share, so drafts shrink as the batch grows, stop where rows
cost as much as plain steps, and switch on and off with hysteresis."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from adaspec.config import SamplingParams
from adaspec.draft import Draft
from adaspec.policies.goodput import SWITCH, GoodputPolicy
from adaspec.policies.rates import expected_tokens
from adaspec.state import DecodeState, Sharing
from adaspec.stats import StepOutcome

# ms of one pass over n rows, all requests' together
CURVES = {
    "gpu-flat": lambda n: 20.0 + 0.5 * n,
    "torch-cpu": lambda n: 300.0 + 60.0 * (n - 1),  # 4 rows about 1.6 times one
    "llama-cpp": lambda n: 41.0 * n,  # every row costs a step
}
ARMS = {"synthetic": 0.0}


def batch_goodput(k: int, others: int, acceptance: float, cost) -> float:
    """Tokens per ms of the whole pass: the others' plain steps and this request's k."""
    return (others + expected_tokens(acceptance, k)) / cost(others + k + 1)


def best_k(others: int, acceptance: float, cost, k_max: int = 12) -> int:
    return max(range(k_max + 1), key=lambda k: batch_goodput(k, others, acceptance, cost))


def run_shared(cost, others: int, acceptance: float, steps: int = 120, seed: int = 0):
    """One request planned beside ``others`` plain ones on a synthetic machine; returns
    the length it verified at each step."""
    rng = random.Random(seed)
    policy = GoodputPolicy(12)
    state = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
    policy.start(state, ARMS)
    lengths = []
    for _ in range(steps):
        state.sharing = Sharing(rows=others, tokens=others, requests=others)
        budget = policy.budget(state).for_drafter("synthetic")
        draft = Draft([7] * budget.depth_limit, None, [0.9] * budget.depth_limit, "synthetic")
        verified = policy.trim(draft)
        accepted = 0
        while accepted < verified and rng.random() < acceptance:
            accepted += 1
        lengths.append(verified)
        rows = others + verified + 1
        policy.observe(
            StepOutcome(
                drafted=verified,
                accepted=accepted,
                emitted=accepted + 1,
                draft_s=0.0,
                verify_s=cost(rows) / 1000,
                drafter="synthetic",
                proposed=len(draft.tokens),
                confidences=tuple(draft.confidences[:verified]),
                batch_rows=rows,
            )
        )
        state.tokens.extend([7] * (accepted + 1))
    return lengths[60:]


@pytest.mark.parametrize("curve", list(CURVES))
@pytest.mark.parametrize("others", [0, 1, 3, 7, 15])
def test_a_draft_beside_others_reaches_the_batch_optimum(curve, others):
    """After a warm-up the lengths chosen give at least 90% of the batch's best goodput,
    and never less than plain steps' (the brute-force optimum over k, others fixed)."""
    cost, acceptance = CURVES[curve], 0.8
    lengths = run_shared(cost, others, acceptance)
    achieved = sum(batch_goodput(k, others, acceptance, cost) for k in lengths) / len(lengths)
    best = batch_goodput(best_k(others, acceptance, cost), others, acceptance, cost)
    assert achieved >= 0.9 * best, (lengths, best_k(others, acceptance, cost))
    assert achieved >= batch_goodput(0, others, acceptance, cost) * 0.99


@pytest.mark.parametrize("curve", ["gpu-flat", "torch-cpu"])
def test_drafts_shrink_as_the_batch_grows(curve):
    mean = [
        sum(lengths) / len(lengths)
        for lengths in (run_shared(CURVES[curve], n, 0.8) for n in (0, 3, 15, 63))
    ]
    assert all(a >= b for a, b in itertools.pairwise(mean)), mean
    assert mean[0] > mean[-1], mean


def test_no_draft_beside_others_where_rows_cost_steps():
    assert sum(run_shared(CURVES["llama-cpp"], 3, 0.9)) == 0
    assert sum(run_shared(CURVES["torch-cpu"], 0, 0.9)) > 0  # control: alone it drafts


def test_a_costs_of_shared_passes_are_learned_by_their_rows():
    policy = GoodputPolicy(8)
    policy.start(DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator()), ARMS)
    policy.observe(StepOutcome(2, 1, 2, 0.0, 0.5, drafter="synthetic", batch_rows=7))
    assert set(policy.verify.seen) == {7} and policy.verify.ms(7) == pytest.approx(500.0)


def planned_beside(others: int, drafting: bool, probability: float) -> int:
    """How much of a 1-token draft of this acceptance probability a request verifies
    beside ``others`` plain requests, having drafted in its last step or not."""
    cost = CURVES["torch-cpu"]
    policy = GoodputPolicy(8)
    for n in range(1, others + 4):
        for _ in range(2):
            policy.verify.observe(n, cost(n), 10)
    state = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
    policy.start(state, ARMS)
    policy.calibration.caution = 0.0
    policy.drafting = drafting
    state.sharing = Sharing(rows=others, tokens=others, requests=others)
    policy.budget(state)
    return policy.trim(Draft([7], None, [probability], "synthetic"))


def test_switching_on_beside_others_needs_a_margin():
    """A draft whose step beats plain steps, but not by SWITCH tokens more of this
    request's, goes on being verified by a request that was drafting, and does not start
    one that was not; one that beats it by more starts either. Alone there is no margin."""
    others, cost = 3, CURVES["torch-cpu"]

    def draft_rate(p: float) -> float:
        return (others + 1 + p) / cost(others + 2)

    plain, held = (others + 1) / cost(others + 1), (others + 1 + SWITCH) / cost(others + 1)
    low = next(p / 100 for p in range(101) if draft_rate(p / 100) > plain * 1.001)
    high = next(p / 100 for p in range(101) if draft_rate(p / 100) > held * 1.001)
    assert draft_rate(low) < held
    assert planned_beside(others, drafting=True, probability=low) == 1
    assert planned_beside(others, drafting=False, probability=low) == 0
    assert planned_beside(others, drafting=False, probability=high) == 1
    alone_low = (1 + low) / cost(2) > 1 / cost(1)
    assert planned_beside(0, drafting=False, probability=low) == int(alone_low)


def test_a_pass_of_a_size_not_timed_twice_does_not_hold_drafts_back():
    """A busy server's pass changes size every step (requests join, leave, draft): once
    any pass is timed, a request beside others plans from the estimate, as alone it does
    after two one-token steps. Waiting for each size to be timed twice kept most steps of
    16 replayed requests plain on a GPU-like curve."""
    policy = GoodputPolicy(8)
    state = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
    policy.start(state, ARMS)
    policy.observe(StepOutcome(0, 0, 1, 0.0, 0.028, batch_rows=16))  # one pass of 16, timed
    state.sharing = Sharing(rows=30, tokens=15.0, requests=15)  # this pass: 31 rows or more
    assert policy.budget(state).for_drafter("synthetic").max_tokens > 0
    state.sharing = Sharing()  # alone, no one-token step timed yet: a plain step first
    assert policy.budget(state).max_tokens == 0
