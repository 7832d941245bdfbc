from __future__ import annotations

import pytest
import torch

from adaspec.budget import Budget
from adaspec.config import SamplingParams
from adaspec.errors import ConfigError
from adaspec.policies import POLICIES
from adaspec.policies.confidence import ConfidencePolicy
from adaspec.policies.fixed import FixedPolicy
from adaspec.policies.heuristic import HeuristicPolicy
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome

STATE = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
ARMS = {"ngram": 0.0}


def outcome(drafted: int, accepted: int) -> StepOutcome:
    return StepOutcome(drafted, accepted, accepted + 1, 0.0, 0.0)


def test_fixed():
    policy = FixedPolicy(5)
    policy.start(STATE, ARMS)
    policy.observe(outcome(5, 0))
    assert policy.budget(STATE) == Budget(5, ask=("ngram",))


def test_heuristic_schedule_matches_hugging_face():
    policy = HeuristicPolicy(3)
    policy.start(STATE, ARMS)
    trace = []
    for drafted_all in [True, True, False, False, False, False, False]:
        k = policy.budget(STATE).max_tokens
        policy.observe(outcome(k, k if drafted_all else 0))
        trace.append(policy.budget(STATE).max_tokens)
    assert trace == [5, 7, 6, 5, 4, 3, 2]
    for _ in range(5):
        policy.observe(outcome(2, 0))
    assert policy.budget(STATE).max_tokens == 1  # floor 1
    policy.start(STATE, ARMS)
    assert policy.budget(STATE).max_tokens == 3  # a new request starts afresh


def test_confidence_budget():
    policy = ConfidencePolicy(8)
    policy.start(STATE, ARMS)
    assert policy.budget(STATE) == Budget(8, min_confidence=0.4, ask=("ngram",))


def test_budget_capped():
    assert Budget(6, 0.4).capped(2) == Budget(6, 0.4, max_depth=2)  # depth 2, 6 nodes
    assert Budget(6, 0.4).capped(2).depth_limit == 2
    assert Budget(6).capped(-1).max_tokens == 0


def test_budget_stop_rule_reads_confidences_through_the_calibration():
    """The policy's stop rule is data: with d tokens drafted, stop once P(all accepted),
    each confidence mapped through the calibration's straight lines, is below min_path[d]."""
    budget = Budget(6, min_path=(0.0, 0.5, 0.3), calibration=((0.0, 0.0), (1.0, 0.8)))
    assert budget.probability(0.5) == pytest.approx(0.4)
    assert budget.probability(2.0) == pytest.approx(0.8)  # past the last point: its value
    assert not budget.enough([1.0])  # 0.8 >= 0.5
    assert budget.enough([0.5])  # 0.4 < 0.5
    assert not budget.enough([1.0, 0.5])  # 0.32 >= 0.3
    assert budget.enough([1.0, 0.4])  # 0.256 < 0.3
    assert not budget.enough([0.1, 0.1, 0.1])  # past the floors: only the depth limit
    assert budget.enough([1.0] * 6)
    assert Budget(4).probability(0.3) == 0.3  # no calibration: the confidence itself


@pytest.mark.parametrize("name", ["fixed", "heuristic", "confidence"])
def test_k_below_one_is_refused(name):
    with pytest.raises(ConfigError, match="k"):
        POLICIES.get(name)(k=0)


def test_unknown_policy_lists_choices():
    with pytest.raises(ConfigError, match="fixed"):
        POLICIES.get("magic")
