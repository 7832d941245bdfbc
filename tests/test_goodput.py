"""The goodput policy and the auto drafter against a synthetic machine whose verify cost
and acceptance are known, so the right answer can be computed by brute force."""

from __future__ import annotations

import random
from dataclasses import replace
from itertools import pairwise

import pytest
import torch

from adaspec.budget import Budget
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.draft import Draft
from adaspec.drafters.auto import AutoDrafter
from adaspec.drafters.base import DrafterSet
from adaspec.drafters.ngram import match_confidence
from adaspec.engine import Engine, ask_drafters
from adaspec.policies.acceptance import Acceptance, Calibration
from adaspec.policies.arm_choice import ArmChoice
from adaspec.policies.estimates import DraftCost, Ewma, VerifyCost
from adaspec.policies.goodput import DOUBT, GoodputPolicy
from adaspec.policies.rates import best_length, best_prefix, expected_tokens
from adaspec.profile import CostProfile
from adaspec.state import DecodeState
from adaspec.stats import ArmCost, StepOutcome, Unverified
from tests.tiny import DRAFTERS, ClockedBackend, FakeClock, ar_tokens, backend, tiny_model

COSTS = {
    "cpu-linear": lambda n: 100.0 * n,  # verifying n positions costs n decode steps
    "cpu-measured": lambda n: 55.0 + 16.0 * (n - 1) if n <= 5 else 120.0 + 41.0 * (n - 5),
    "gpu-flat": lambda n: 20.0 + 0.5 * n,
}
# The drafters a policy chooses among in these tests, each with its guessed cost share.
ARMS = {"ngram": 0.0, "synthetic": 0.0, "model": 0.32}


def brute_force(acceptance: float, cost, draft_ms: float, k_max: int) -> int:
    rates = [expected_tokens(acceptance, k) / (cost(k + 1) + draft_ms * k) for k in range(k_max)]
    rates.append(expected_tokens(acceptance, k_max) / (cost(k_max + 1) + draft_ms * k_max))
    return max(range(k_max + 1), key=rates.__getitem__)


@pytest.mark.parametrize("cost", list(COSTS))
@pytest.mark.parametrize("acceptance", [0.0, 0.3, 0.6, 0.8, 0.9, 0.97, 1.0])
@pytest.mark.parametrize("draft_ms", [0.0, 5.0, 30.0])
def test_best_length_is_the_brute_force_optimum(cost, acceptance, draft_ms):
    k = best_length(acceptance, COSTS[cost], draft_ms, 12)
    assert k == brute_force(acceptance, COSTS[cost], draft_ms, 12)


def test_no_speculation_when_it_cannot_pay():
    linear = COSTS["cpu-linear"]
    for acceptance in (0.0, 0.5, 0.9, 0.99):
        assert best_length(acceptance, linear, 1.0, 16) == 0
        assert best_prefix([acceptance] * 8, linear, 0.0) == 0
    assert best_length(0.9, COSTS["gpu-flat"], 1.0, 16) > 0


def test_best_prefix_equals_best_length_for_equal_probabilities():
    for name, cost in COSTS.items():
        for acceptance in (0.5, 0.8, 0.95):
            expected = best_length(acceptance, cost, 0.0, 10)
            assert best_prefix([acceptance] * 10, cost, 0.0) == expected, name


def simulate(
    policy, cost, acceptance_at, steps, confidence=0.9, draft_ms=0.0, seed=0, judged=False
):
    """Run the policy on a synthetic machine: the drafter fills its budget with tokens of a
    fixed confidence, the target accepts each with ``acceptance_at(step)`` in turn, and a
    verify of n positions takes ``cost(n)`` ms. ``judged``: a draft a plain step left is
    judged as the engine judges it once the text is committed (at once, here). Returns the
    verified length per step."""
    rng = random.Random(seed)
    state = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
    policy.start(state, ARMS)
    lengths = []
    for step in range(steps):
        budget = policy.budget(state).for_drafter("synthetic")
        draft = Draft(
            [7] * budget.depth_limit, None, [confidence] * budget.depth_limit, "synthetic"
        )
        verified = policy.trim(draft)
        accepted = 0
        while accepted < verified and rng.random() < acceptance_at(step):
            accepted += 1
        lengths.append(verified)
        unverified = ()
        if judged and not verified and draft.tokens:
            hits = 0
            while hits < len(draft.tokens) and rng.random() < acceptance_at(step):
                hits += 1
            tried = tuple((confidence, k < hits) for k in range(min(hits + 1, len(draft.tokens))))
            unverified = (Unverified("synthetic", tried, hits, len(tried)),)
        outcome = StepOutcome(
            drafted=verified,
            accepted=accepted,
            emitted=accepted + 1,
            draft_s=draft_ms * len(draft.tokens) / 1000,
            verify_s=cost(verified + 1) / 1000,
            drafter="synthetic",
            proposed=len(draft.tokens),
            confidences=tuple(draft.confidences[:verified]),
            unverified=unverified,
        )
        policy.observe(outcome)
        state.tokens.extend([7] * outcome.emitted)
    return lengths


def goodput_of(k: int, acceptance: float, cost) -> float:
    return expected_tokens(acceptance, k) / cost(k + 1)


@pytest.mark.parametrize("cost", ["cpu-measured", "gpu-flat"])
@pytest.mark.parametrize("acceptance", [0.5, 0.8, 0.95])
def test_policy_settles_on_the_best_length(cost, acceptance):
    """With costs measured online and acceptance learned online, the lengths chosen after a
    warm-up reach (within 10%) the goodput of the brute-force optimum where speculating
    pays clearly, and at least plain decoding's where it barely pays."""
    fn = COSTS[cost]
    lengths = simulate(GoodputPolicy(12), fn, lambda step: acceptance, 120)
    best = goodput_of(brute_force(acceptance, fn, 0.0, 12), acceptance, fn)
    late = lengths[60:]
    achieved = sum(goodput_of(k, acceptance, fn) for k in late) / len(late)
    plain = goodput_of(0, acceptance, fn)
    if best >= 1.25 * plain:
        assert achieved >= 0.9 * best, (lengths, best)
    else:  # near break-even the policy is cautious by design, but never slower than plain
        assert achieved >= plain, (lengths, best)


def steep(n: int) -> float:
    """llama.cpp's forward over n rows on a two-core CPU (a saved profile's, 512 tokens of
    context): each row costs most of a step."""
    points = [(1, 52.0), (2, 95.0), (4, 164.0), (8, 329.0), (16, 632.0)]
    for (n0, ms0), (n1, ms1) in pairwise(points):
        if n <= n1:
            return ms0 + (ms1 - ms0) * (n - n0) / (n1 - n0)
    return 632.0 * n / 16


@pytest.mark.parametrize("judged", [True, False])
def test_a_free_drafter_never_verified_learns_from_the_text_it_guessed(judged):
    """Where only long, nearly sure drafts pay, a lookup whose raw confidence (0.5) says
    its tokens are doubtful is never verified, so verifying alone would never show that
    it is right 99% of the time. Its drafts judged against the text that followed show it
    for free, and it goes on to verify drafts of several tokens; the control, without that
    evidence, stays plain to the end."""
    policy = GoodputPolicy(16, _profile_of(steep))
    lengths = simulate(policy, steep, lambda step: 0.99, 80, confidence=0.5, judged=judged)
    if judged:
        assert sum(lengths[40:]) >= 2.5 * 40, lengths
    else:
        assert sum(lengths) == 0, lengths


def test_policy_with_a_cost_profile_never_speculates_on_linear_cost():
    lengths = simulate(GoodputPolicy(12), COSTS["cpu-linear"], lambda step: 0.9, 60)
    assert sum(lengths[5:]) == 0, lengths


def achieved_share(lengths, acceptance: float, cost) -> float:
    """Mean goodput of the chosen lengths as a share of the brute-force optimum's."""
    best = goodput_of(brute_force(acceptance, cost, 0.0, 12), acceptance, cost)
    return sum(goodput_of(k, acceptance, cost) for k in lengths) / len(lengths) / best


def test_a_step_the_prefill_scored_teaches_only_the_cost_of_what_ran():
    """The first step takes its first row from the prompt's prefill: it must not record a
    near-zero cost for one position, and a first draft of k costs k positions."""
    policy = GoodputPolicy(8)
    policy.start(DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator()), ARMS)
    policy.observe(StepOutcome(0, 0, 1, 0.0, 0.00001, prescored=True))
    assert policy.verify.seen == {}
    policy.observe(StepOutcome(3, 3, 4, 0.0, 0.3, drafter="ngram", proposed=3, prescored=True))
    assert set(policy.verify.seen) == {3} and policy.verify.ms(3) == pytest.approx(300.0)
    assert policy.verify.context == 3 + 1 + 4


def test_the_first_step_drafts_only_what_beats_the_token_the_prefill_gave():
    """On a request's first step the prefill has scored the next token: without a draft
    the step costs nothing, so a draft must pay its whole forward, not just the increase
    over a one-token step."""
    policy = GoodputPolicy(8)
    for n in (1, 2, 3):  # cpu-measured: 55, 71, 87 ms
        policy.verify.observe(n, COSTS["cpu-measured"](n), 10)
    state = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
    policy.start(state, ARMS)
    draft = Draft([7], None, [0.5], "ngram")
    policy.calibration.caution = 0.0
    policy.budget(state)
    assert policy.trim(draft) == 1  # a later step: 1.5 tokens in 71 ms beats 1 in 55
    state.next_logits = torch.zeros(8)
    policy.budget(state)
    assert policy.trim(draft) == 0  # the first: 0.5 more tokens for 55 ms does not


def test_policy_adapts_when_acceptance_drops_mid_generation():
    fn = COSTS["gpu-flat"]
    lengths = simulate(GoodputPolicy(12), fn, lambda step: 0.97 if step < 60 else 0.05, 100)
    assert achieved_share(lengths[30:60], 0.97, fn) >= 0.9, lengths[30:60]
    assert max(lengths[66:]) <= 3, lengths[60:]  # within 6 steps of the change: short ones
    assert achieved_share(lengths[68:], 0.05, fn) >= 0.9, lengths[60:]


def test_policy_adapts_when_acceptance_rises():
    fn = COSTS["cpu-measured"]
    lengths = simulate(GoodputPolicy(12), fn, lambda step: 0.1 if step < 40 else 0.99, 90, 0.95)
    assert achieved_share(lengths[20:40], 0.1, fn) >= 0.9, lengths[20:40]
    assert achieved_share(lengths[52:], 0.99, fn) >= 0.9, lengths[40:]


def test_draft_cost_limits_the_budget():
    """A drafter whose tokens cost as much as a verify step gets a zero budget on a CPU."""
    policy = GoodputPolicy(8)
    fn = COSTS["cpu-measured"]
    simulate(policy, fn, lambda step: 0.9, 30, draft_ms=60.0)
    state = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
    assert policy.budget(state).for_drafter("synthetic").max_tokens == 0


def test_costs_carry_over_to_the_next_request_and_acceptance_does_not():
    """What a forward costs is the machine's; a second request on a machine where verifying
    is linear does not pay again to find out, while acceptance starts from its prior."""
    policy = GoodputPolicy(12)
    first = simulate(policy, COSTS["cpu-linear"], lambda step: 0.9, 30)
    assert sum(first[:5]) > 0  # the first request explores
    second = simulate(policy, COSTS["cpu-linear"], lambda step: 0.9, 30, seed=1)
    assert sum(second) == 0, second
    assert policy.acceptance.rate("synthetic") == policy.acceptance.prior_of("synthetic")


def test_what_a_confidence_means_carries_over_to_the_next_request():
    """Rejected tokens of one confidence lower that confidence's rate for later requests;
    a confidence never tested keeps its raw value, and one not tested for a while drifts
    back to it, so it is tried again."""
    calibration = Calibration()
    calibration.start()
    for _ in range(10):
        calibration.observe("ngram", [0.9, 0.9], 0)  # the first token is rejected each time
    calibration.start()
    assert calibration.rate("ngram", 0.9) < 0.3
    assert calibration.probability("ngram", 0.9) < Calibration().probability("ngram", 0.9)
    assert calibration.rate("ngram", 0.6) == 0.6
    assert calibration.rate("model", 0.9) == 0.9
    for _ in range(300):
        calibration.observe("ngram", [], 0)  # steps that verified nothing
    assert calibration.rate("ngram", 0.9) == pytest.approx(0.9, abs=0.01)


def test_a_miss_makes_every_confidence_less_likely_in_this_request_only():
    """The text's offset is shared by all confidences of a drafter: rejections after short
    matches lower the chance of long ones too, until the next request."""
    calibration = Calibration()
    calibration.start()
    before = calibration.probability("ngram", 0.95)
    calibration.observe("ngram", [0.5, 0.6], 0)
    calibration.observe("ngram", [0.5], 0)
    assert calibration.probability("ngram", 0.95) < before - 0.1
    assert calibration.rate("ngram", 0.95) == 0.95
    calibration.start()
    assert calibration.probability("ngram", 0.95) == pytest.approx(before)


def test_caution_shrinks_as_the_text_shows_evidence():
    """Planning uses a pessimistic offset; consistent evidence narrows the gap to the
    estimate (the rate of a confidence the target always accepts approaches 1)."""
    calibration = Calibration(caution=0.5)
    calibration.start()
    gap_before = calibration.rate("ngram", 0.8) - calibration.probability("ngram", 0.8)
    assert gap_before > 0
    for _ in range(20):
        calibration.observe("ngram", [0.8, 0.8, 0.8, 0.8], 4)
    assert calibration.probability("ngram", 0.8) > 0.9
    gap_after = calibration.rate("ngram", 0.8) - calibration.probability("ngram", 0.8)
    assert gap_after < gap_before / 10


def test_an_untimed_machine_tries_a_draft_and_learns_what_it_costs():
    """With no profile, the cost of a multi-token forward is guessed low, so the first
    plausible draft is tried and timed; a pessimistic guess would never be put to the test."""
    policy = GoodputPolicy(4)
    policy.start(DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator()), ARMS)
    policy.verify.observe(1, 100.0, 10)  # one-token steps timed; no bigger forward yet
    draft = Draft([7], None, [match_confidence(1)], "ngram")  # a 1-gram match: p = 0.17
    assert policy.trim(draft) == 1
    policy.verify.observe(2, 160.0, 12)  # a 2-token forward costs 1.6x one: a CPU
    assert policy.trim(draft) == 0


def test_verify_cost_interpolates_and_extrapolates():
    cost = VerifyCost(guess_slope=0.5)
    assert cost.ms(4) == pytest.approx(1 + 0.5 * 3)  # nothing seen: unit cost, guessed slope
    cost.observe(1, 100.0, 10)
    assert cost.ms(3) == pytest.approx(100 * (1 + 0.5 * 2))
    cost.observe(5, 300.0, 10)
    assert cost.ms(3) == pytest.approx(200.0)
    assert cost.ms(9) == pytest.approx(500.0)


def test_the_bandit_follows_the_faster_arm_and_switches():
    """Policies that predict no rates ask the arm with the best discounted tokens per
    second plus an exploration bonus."""
    choice = ArmChoice(("a", "b"))
    picks = []
    for step in range(200):
        (arm,) = choice.choose()
        picks.append(arm)
        fast = "a" if step < 100 else "b"
        emitted = 3 if arm == fast else 1
        choice.observe(StepOutcome(1, emitted - 1, emitted, 0.0, 0.1, drafter=arm, proposed=1))
    assert picks[50:100].count("a") >= 40, picks[50:100]
    assert picks[150:].count("b") >= 40, picks[150:]
    assert ArmChoice(()).choose() == ()


def test_goodput_and_auto_speculate_on_tiny_models_and_match_autoregressive():
    """The defaults draft (so the equality below is not vacuous) and stay lossless."""
    clock = FakeClock()
    target = ClockedBackend(backend(tiny_model()), clock)
    prompt = [5, 9, 13, 5, 9, 13, 5, 9, 13, 5, 9, 13]
    expected = ar_tokens(target.inner, prompt, 40)
    engine = Engine(target, DRAFTERS["auto"](target), GoodputPolicy(6), clock=clock)
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=40))
    assert result.token_ids == expected
    assert result.stats.summary()["drafted"] > 0


class _CostedArm:
    """A drafter that fills its budget with tokens of one confidence when ``has_draft``
    says it has any, each token costing ``ms`` of drafting; counts how often it is asked."""

    row_top_k = 0

    def __init__(self, name: str, ms: float, confidence: float, has_draft=lambda step: True):
        self.name, self.ms, self.confidence, self.has_draft = name, ms, confidence, has_draft
        self.step = 0
        self.asked = 0
        self.spent_ms = 0.0  # drafting time of the step under way

    def start(self, state):
        pass

    def propose(self, state, budget: Budget) -> Draft:
        self.asked += 1
        k = budget.depth_limit if self.has_draft(self.step) else 0
        self.spent_ms += self.ms * k
        return Draft([7] * k, None, [self.confidence] * k, self.name)

    def observe(self, outcome):
        self.step += 1
        self.spent_ms = 0.0


def _timed_apart(costs, arms):
    """Each asked arm's cost at its own scripted price (the test's clock stands still)."""
    spent = {arm.name: arm.spent_ms / 1000 for arm in arms}
    return [replace(cost, seconds=spent[cost.drafter]) for cost in costs]


def simulate_auto(
    arms,
    acceptance: dict[str, float],
    cost,
    steps: int,
    seed: int = 0,
    shares: dict[str, float] | None = None,
    profiled: bool = False,
):
    """The goodput policy and the auto drafter over these arms on a synthetic machine
    (``profiled``: with a saved cost profile of it); returns the drafter that proposed each
    step's verified draft ("" for a plain step)."""
    rng = random.Random(seed)
    profile = _profile_of(cost) if profiled else None
    policy = GoodputPolicy(8, profile)
    auto = DrafterSet({arm.name: arm for arm in arms}, shares)
    state = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
    policy.start(state, auto.shares)
    auto.start(state)
    used = []
    for _ in range(steps):
        asked = ask_drafters(auto.arms, state, policy.budget(state), policy, lambda: 0.0)
        proposal = asked.draft
        draft = proposal.prefix(policy.trim(proposal))
        accepted = 0
        while accepted < len(draft.tokens) and rng.random() < acceptance.get(draft.source, 0):
            accepted += 1
        used.append(draft.source if draft.tokens else "")
        outcome = StepOutcome(
            drafted=len(draft.tokens),
            accepted=accepted,
            emitted=accepted + 1,
            draft_s=sum(arm.spent_ms for arm in arms) / 1000,
            asked=tuple(_timed_apart(asked.costs, arms)),
            verify_s=cost(len(draft.tokens) + 1) / 1000,
            drafter=proposal.source,
            proposed=len(proposal.tokens),
            confidences=tuple(draft.confidences),
        )
        policy.observe(outcome)
        auto.observe(outcome)
        state.tokens.extend([7] * outcome.emitted)
    return used


def test_auto_drafts_with_the_model_where_lookup_has_nothing_and_the_model_pays():
    """A CPU where verifying 4 positions costs 1.3 steps and a draft token 0.25 of one: with
    no n-gram match, the draft model (85% accepted) is the arm that pays, and it is kept."""
    lookup = _CostedArm("ngram", 0.0, 0.9, has_draft=lambda step: False)
    model = _CostedArm("model", 25.0, 0.9)
    cost = lambda n: 100.0 + 10.0 * (n - 1)  # noqa: E731
    used = simulate_auto([lookup, model], {"model": 0.85}, cost, 80)
    assert used[20:].count("model") >= 50, used


def test_auto_leaves_a_model_that_costs_half_a_step_after_probing_it():
    """The llama.cpp case: a draft token costs half a target step and verifying is dear, so
    after a probe or two the model arm is neither used nor asked to draft."""
    lookup = _CostedArm("ngram", 0.0, 0.9, has_draft=lambda step: False)
    model = _CostedArm("model", 50.0, 0.9)
    cost = lambda n: 77.0 + 43.0 * (n - 1)  # noqa: E731
    used = simulate_auto([lookup, model], {"model": 0.6}, cost, 80)
    asked = model.asked
    assert used[10:].count("model") == 0, used
    assert asked <= 4, asked


def test_auto_does_not_probe_a_model_its_weights_rule_out():
    """llama.cpp on a CPU, profiled: even accepted at the prior rate, a draft model with
    45% of the target's weights cannot beat plain steps, so its set-up is never paid."""
    lookup = _CostedArm("ngram", 0.0, 0.9, has_draft=lambda step: False)
    model = _CostedArm("model", 35.0, 0.9)
    cost = lambda n: 77.0 + 43.0 * (n - 1)  # noqa: E731
    shares = {"ngram": 0.0, "model": 0.45}
    used = simulate_auto([lookup, model], {"model": 0.6}, cost, 80, shares=shares, profiled=True)
    assert model.asked == 0 and used.count("model") == 0


def test_a_models_weight_share_does_not_keep_it_out_where_it_pays():
    """The torch CPU case, profiled: a model with a third of the target's weights is
    probed on its guessed cost, and kept once timed."""
    lookup = _CostedArm("ngram", 0.0, 0.9, has_draft=lambda step: False)
    model = _CostedArm("model", 25.0, 0.9)
    cost = lambda n: 100.0 + 10.0 * (n - 1)  # noqa: E731
    shares = {"ngram": 0.0, "model": 0.32}
    used = simulate_auto([lookup, model], {"model": 0.85}, cost, 80, shares=shares, profiled=True)
    assert used[20:].count("model") >= 50, used


def test_auto_keeps_a_good_lookup_without_asking_the_model():
    """Where the n-gram match is long and reliable, the model is not worth its cost: it is
    not asked, so a text that copies the prompt pays nothing for having a draft model."""
    lookup = _CostedArm("ngram", 0.0, 0.99)
    model = _CostedArm("model", 25.0, 0.9)
    cost = lambda n: 100.0 + 10.0 * (n - 1)  # noqa: E731
    used = simulate_auto([lookup, model], {"ngram": 0.99, "model": 0.85}, cost, 60)
    assert used[10:].count("ngram") >= 45, used
    assert model.asked <= 10, model.asked


def test_auto_switches_arms_when_the_text_stops_copying():
    """Lookup matches for 40 steps, then never again: the model takes over within a few."""
    lookup = _CostedArm("ngram", 0.0, 0.99, has_draft=lambda step: step < 40)
    model = _CostedArm("model", 25.0, 0.9)
    cost = lambda n: 100.0 + 10.0 * (n - 1)  # noqa: E731
    used = simulate_auto([lookup, model], {"ngram": 0.99, "model": 0.85}, cost, 90)
    assert used[10:40].count("ngram") >= 25, used[:40]
    assert used[50:].count("model") >= 35, used[40:]


def test_each_asked_arm_is_priced_by_its_own_time_not_the_steps_drafting():
    """A lookup kept in a step where the model arm was asked too costs a lookup's time:
    charging it the step's whole drafting would price it like the model and leave it out.
    Control: the same steps untimed apart charge the kept lookup the model's time."""
    asked = (ArmCost("ngram", 0.0001, 4), ArmCost("model", 0.1, 4))
    apart, together = GoodputPolicy(8), GoodputPolicy(8)
    state = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
    for policy in (apart, together):
        policy.start(state, ARMS)
    for _ in range(3):
        apart.observe(StepOutcome(4, 4, 5, 0.1001, 0.1, drafter="ngram", proposed=4, asked=asked))
        together.observe(StepOutcome(4, 4, 5, 0.1001, 0.1, drafter="ngram", proposed=4))
    assert apart.draft_ms["ngram"].value == pytest.approx(0.025)
    assert apart.draft_ms["model"].value == pytest.approx(25.0)
    assert together.draft_ms["ngram"].value > 20.0


def test_a_drafters_first_step_in_a_request_does_not_price_its_tokens():
    """A draft model's first proposal prefills the prompt: that set-up is not a per-token
    cost. What a drafted token costs is the machine's, so it carries over to the next."""
    policy = GoodputPolicy(8)
    state = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
    policy.start(state, ARMS)
    policy.observe(StepOutcome(2, 2, 3, 2.0, 0.1, drafter="model", proposed=2))
    assert "model" not in policy.draft_ms
    policy.observe(StepOutcome(2, 2, 3, 0.05, 0.1, drafter="model", proposed=2))
    assert policy.draft_ms["model"].value == pytest.approx(25.0)
    policy.start(state, ARMS)
    for _ in range(2):  # the baseline timed: drafting is planned
        policy.verify.observe(1, 100.0, 3)
    assert policy.budget(state).for_drafter("model").promise is not None


def test_a_smaller_forward_never_looks_dearer_than_a_larger_one():
    """A size timed once in a noisy moment must not make a short draft look dearer than a
    longer one (which would skip the draft length that pays)."""
    cost = VerifyCost()
    cost.observe(1, 200.0, 10)
    cost.observe(2, 280.0, 10)  # once, under load
    cost.observe(3, 230.0, 10)
    assert cost.ms(2) == pytest.approx(230.0)
    assert cost.ms(1) == pytest.approx(200.0)


def test_one_unlucky_short_draft_does_not_write_a_drafter_off():
    """Acceptance pools tested tokens: after 2/2, 2/2, 1/2, a 0/2 leaves a drafter that has
    been right 5 times in 7 near that, where averaging step estimates would say about a
    half; unused, its estimate returns to the prior."""
    acceptance = Acceptance()
    for accepted in (2, 2, 1, 0):
        acceptance.observe("model", 2, accepted)
    assert 0.6 < acceptance.rate("model") < 0.75
    for _ in range(60):
        acceptance.idle_except("ngram")
    assert acceptance.rate("model") == pytest.approx(acceptance.prior_of("model"), abs=0.01)


def test_a_request_starts_from_how_often_the_drafter_was_right_lately():
    """A draft model right a third of the time over past requests starts the next one
    near that rather than at the fixed prior, and a few steps of a text it predicts well
    still lift it there."""
    acceptance = Acceptance()
    assert acceptance.prior_of("model") == acceptance.prior
    for _ in range(3):
        acceptance.start()
        for accepted in (1, 0, 0, 2, 0, 1, 0, 0):
            acceptance.observe("model", 2, accepted)
    acceptance.start()
    assert 0.3 < acceptance.rate("model") < 0.45
    assert acceptance.prior_of("ngram") == acceptance.prior
    for _ in range(4):
        acceptance.observe("model", 4, 4)
    assert acceptance.rate("model") > 0.85


def test_a_request_starts_from_how_sure_the_target_is_of_its_text():
    """A draft agrees with the target about as often as the target is sure of its token:
    after requests where the model's acceptance followed the target's top probability,
    a request whose plain steps are unsure starts the model low, a sure one high, before
    the model has drafted in it; with nothing decoded yet, the pooled rate stands. With no
    history at all (a process's first request), the target's sureness is the prior."""
    acceptance = Acceptance()
    for _ in range(4):
        acceptance.observe_target(0.55)
    assert acceptance.prior_of("model") == pytest.approx(0.55)
    acceptance = Acceptance()
    rng = random.Random(0)
    for sure in (0.6, 0.9) * 10:
        acceptance.start()
        for _ in range(8):
            acceptance.observe_target(sure)
            acceptance.observe("model", 2, sum(rng.random() < sure for _ in range(2)))
    acceptance.start()
    pooled = acceptance.prior_of("model")
    for _ in range(4):
        acceptance.observe_target(0.55)
    unsure = acceptance.rate("model")
    acceptance.start()
    for _ in range(4):
        acceptance.observe_target(0.95)
    sure = acceptance.rate("model")
    assert unsure < 0.68 < 0.78 < sure
    assert unsure < pooled < sure


def test_one_catch_up_does_not_price_a_draft_model_out():
    """A draft model that sat out steps feeds what it skipped before drafting: that step's
    cost per token is an outlier, and a drafter priced out is never timed again."""
    cost = DraftCost()
    for _ in range(5):
        cost.add(90.0)
    cost.add(900.0)
    assert cost.value == pytest.approx(90.0 * 1.15)
    for _ in range(40):
        cost.add(300.0)  # a lasting change still comes through
    assert cost.value == pytest.approx(300.0, rel=0.01)


def test_a_drafter_priced_out_drifts_back_to_its_cheapest_cost():
    cost = DraftCost()
    for sample in (90.0, 130.0, 190.0, 280.0):
        cost.add(sample)
    assert cost.value > 130.0
    for _ in range(100):
        cost.idle()
    assert cost.value == pytest.approx(90.0, rel=0.01)


def test_a_long_context_prices_the_draft_models_first_step_in_a_request():
    """A draft model's first step in a request prefills the whole context: spread over the
    steps left, it makes the model's promise lower for a long prompt than for a short one,
    and costs nothing once the model has drafted in this request."""
    policy = GoodputPolicy(8)
    state = DecodeState([1] * 100, 100, SamplingParams(), torch.Generator())
    for n in (1, 1, 2, 3):
        policy.verify.observe(n, COSTS["cpu-measured"](n), 100)
    policy.draft_ms["model"] = DraftCost()
    policy.draft_ms["model"].add(20.0)
    policy.start(state, ARMS)
    policy.observe(StepOutcome(2, 2, 3, 0.040 + 0.5, 0.07, drafter="model", proposed=2))
    assert policy.setup_ms["model"].value == pytest.approx(500.0 / 100)  # ms per context token
    policy.start(state, ARMS)  # a new request: the model not used in it yet
    policy.verify.context = 50
    short = policy.budget(state).for_drafter("model").promise
    policy.verify.context = 1000
    long = policy.budget(state).for_drafter("model").promise
    assert long < short
    policy.observe(StepOutcome(2, 2, 3, 0.040, 0.07, drafter="model", proposed=2))
    assert policy.budget(state).for_drafter("model").promise > short


def test_an_untimed_models_set_up_is_guessed_from_the_targets_prefill_cost():
    """Before a draft model is first used, its set-up is guessed (its weights' share of
    the target prefilling the context): on llama.cpp's measured costs a 1,000-token prompt
    with 128 tokens to go keeps an untimed model out, a 20-token one does not."""
    cost = lambda n: 60.0 + 40.0 * (n - 1)  # noqa: E731  (llama.cpp on a CPU, per row)
    policy = GoodputPolicy(8, _profile_of(cost))
    policy.acceptance.prior = 0.95

    def promise(context: int) -> float:
        state = DecodeState([1] * context, context, SamplingParams(), torch.Generator())
        state.max_new_tokens = 128
        policy.start(state, {"ngram": 0.0, "model": 0.1})
        for n in (1, 1):
            policy.verify.observe(n, cost(n), context)
        return policy.budget(state).for_drafter("model").promise

    plain = 1.0 / cost(1)
    assert promise(20) >= plain / DOUBT  # capped at a plain step: asked where nothing beats it
    assert promise(1000) < plain / DOUBT  # not asked: its set-up is not paid
    assert policy._setup_guess(0.1) == pytest.approx(0.1 * 40.0 * 1000 / 128, rel=0.05)


def test_a_draft_models_set_up_is_spread_over_the_tokens_left_not_the_steps():
    """A set-up the answer cannot repay is not bought: 600 ms of prefilling a 300-token
    context with 30 tokens left, for a draft that saves 11 of a token's 55 ms. Spread over
    the 30 steps plain decoding would take, it looked cheap enough; but a drafting model
    takes fewer steps, and what it saves, and must repay the set-up with, is per token.
    With 300 tokens left the same set-up pays, and the model is bought."""
    cost = COSTS["cpu-measured"]
    policy = GoodputPolicy(8)
    for n in (1, 1, 2, 3, 4):
        policy.verify.observe(n, cost(n), 300)
    policy.draft_ms["model"] = DraftCost()
    policy.draft_ms["model"].add(10.0)
    policy.setup_ms["model"] = Ewma()
    policy.setup_ms["model"].add(2.0)  # ms per token of context
    policy.acceptance.prior = 0.8

    def promise(limit: int) -> float:
        state = DecodeState([1] * 300, 300, SamplingParams(), torch.Generator())
        state.max_new_tokens = limit
        policy.start(state, ARMS)
        policy.verify.context = 300
        return policy.budget(state).for_drafter("model").promise

    plain = 1.0 / cost(1)
    assert policy._rate(10.0, 0.8, 0.0)[1] > 1.2 * plain  # without its set-up it would pay
    assert promise(30) < plain
    assert promise(300) > plain


def _profile_of(cost) -> CostProfile:
    """A saved profile of a synthetic machine whose forward over n positions costs cost(n)."""
    ks = [1, 2, 3, 4, 6, 8, 12, 16]
    return CostProfile("synthetic", "test", 1, ks, [128], [[cost(k) for k in ks]], [[0.0] * 8])


def test_a_backends_weight_bytes_give_the_draft_models_share():
    """What auto guesses a draft model costs before timing it: its weights over the
    target's (a packed target counts its weights once)."""
    target, draft = backend(tiny_model(hidden=64)), backend(tiny_model(hidden=32))
    count = lambda m: sum(p.numel() for p in m.parameters()) * 8  # noqa: E731  (float64)
    assert target.weight_bytes == count(target.model)
    auto = AutoDrafter.create(target, draft)
    assert auto.shares["model"] == pytest.approx(count(draft.model) / count(target.model))
    assert 0.0 < auto.shares["model"] < 0.5


def test_goodput_times_plain_steps_before_it_drafts():
    """Speculation is judged against a plain step, so plain steps are timed before any
    draft, and a cold first one (weights faulted in) does not stand for what one costs."""
    policy = GoodputPolicy(8)
    state = DecodeState([1, 2, 3], 3, SamplingParams(), torch.Generator())
    policy.start(state, ARMS)
    assert not policy.budget(state).allows_drafting
    policy.observe(StepOutcome(0, 0, 1, 0.0, 0.114))  # cold
    assert not policy.budget(state).allows_drafting
    policy.observe(StepOutcome(0, 0, 1, 0.0, 0.077))
    assert policy.budget(state).allows_drafting
    assert policy.verify.ms(1) == pytest.approx(77.0)


def test_a_draft_the_calibration_doubts_stops_before_its_next_token():
    """SpecDec++'s stop, priced: where a drafted token costs 40% of a step that barely
    grows with its positions (torch on a CPU) and the text is being accepted, the plan
    drafts several tokens; one the calibration doubts ends the draft before another forward
    is paid for, a trusted one does not, and a draft at the plan's length stops there."""
    policy = GoodputPolicy(8)
    policy.start(DecodeState([1] * 40, 40, SamplingParams(), torch.Generator()), ARMS)
    for _ in range(5):
        policy.acceptance.observe("model", 4, 4)
    for n in (1, 1, 2, 3, 4, 5):
        policy.verify.observe(n, 220.0 + 5.0 * n, 40)
    policy.draft_ms["model"] = DraftCost()
    policy.draft_ms["model"].add(88.0)
    policy.set_up.add("model")
    budget = policy.budget(DecodeState([1] * 40, 40, SamplingParams(), torch.Generator()))
    model = budget.for_drafter("model")
    assert model.depth_limit >= 3
    assert model.enough([0.05])
    assert not model.enough([0.99])
    assert not model.enough([0.99, 0.97])
    assert model.enough([0.99] * model.depth_limit)
    assert not budget.for_drafter("ngram").enough([0.05])  # not timed: no stop rule


def test_a_paid_draft_left_unverified_counts_against_its_drafter():
    """A draft model whose first token is too doubtful to verify has spent a forward for
    nothing: to the plan that is a rejection, so repeated wasted drafts make the arm look
    less promising. An n-gram lookup costs nothing, so what trim() leaves out of its full
    draft says nothing of it."""
    policy = GoodputPolicy(8)
    state = DecodeState([1] * 40, 40, SamplingParams(), torch.Generator())
    policy.start(state, ARMS)
    for n in (1, 1, 2, 3):
        policy.verify.observe(n, 300.0 + 50.0 * (n > 1), 40)
    policy.draft_ms["model"] = DraftCost()
    policy.draft_ms["model"].add(130.0)
    policy.set_up.update({"model", "ngram"})
    before = policy.acceptance.rate("model")
    for _ in range(3):
        policy.observe(StepOutcome(0, 0, 1, 0.13, 0.3, drafter="model", proposed=1))
        policy.observe(StepOutcome(0, 0, 1, 0.0, 0.3, drafter="ngram", proposed=8))
    assert policy.acceptance.rate("model") < before - 0.2
    assert policy.acceptance.rate("ngram") == pytest.approx(policy.acceptance.prior)


def test_a_trimmed_draft_counts_one_rejection_after_the_kept_tokens():
    acceptance = Acceptance(pseudo=1e-9)
    acceptance.observe("model", 3, 3, trimmed=True)  # 3 of 4 drafted verified, all kept
    assert acceptance.rate("model") == pytest.approx(0.75)
    acceptance.start()
    acceptance.observe("model", 3, 1, trimmed=True)  # the rejection is counted once
    assert acceptance.rate("model") == pytest.approx(0.5)


def test_a_draft_model_must_promise_a_margin_over_what_is_in_hand():
    """A paid drafter estimated 5% better than a plain step is not asked (the best-looking
    estimate is the one most likely too high, and a CPU's costs are timed under noise);
    one estimated 25% better is. Free drafters are judged on their tokens, with no margin."""
    cost = COSTS["cpu-measured"]
    policy = GoodputPolicy(8)
    state = DecodeState([1] * 50, 50, SamplingParams(), torch.Generator())
    policy.start(state, ARMS)
    for n in (1, 1, 2, 3, 4):
        policy.verify.observe(n, cost(n), 50)
    policy.draft_ms["model"] = DraftCost()
    policy.draft_ms["model"].add(10.0)
    policy.set_up = {"model"}  # set up in this request already: no set-up to charge
    plain = 1.0 / cost(1)

    def acceptance_for(gain: float) -> float:
        grid = [i / 1000 for i in range(1, 1000)]
        return min(grid, key=lambda p: abs(policy._rate(10.0, p, 0.0)[1] / plain - gain))

    policy.acceptance.prior = acceptance_for(1.05)
    assert policy.budget(state).for_drafter("model").promise < plain
    policy.acceptance.prior = acceptance_for(1.25)
    assert policy.budget(state).for_drafter("model").promise > plain


def test_a_draft_model_not_timed_yet_is_tried_where_the_target_is_sure_of_the_text():
    """Before its first draft, a model's promise starts from how sure the target is of this
    text: tried on code the target is sure of, left alone on prose it is not (with one
    fixed prior it would be tried on both or neither)."""
    cost = lambda n: 260.0 + 100.0 * min(n - 1, 1) + 10.0 * max(n - 2, 0)  # noqa: E731
    plain = 1.0 / cost(1)

    def promise(sure: float) -> float:
        policy = GoodputPolicy(8)
        state = DecodeState([1] * 50, 50, SamplingParams(), torch.Generator())
        policy.start(state, ARMS)
        for n in (1, 1, 2, 3, 4):
            policy.verify.observe(n, cost(n), 50)
        for _ in range(10):
            policy.acceptance.observe_target(sure)
        return policy.budget(state).for_drafter("model").promise

    assert promise(0.95) == pytest.approx(plain)  # asked where nothing better is in hand
    assert promise(0.6) < plain  # never asked


@pytest.mark.parametrize(("curve", "wide"), [("gpu-flat", True), ("cpu-measured", False)])
def test_a_paid_drafter_gets_as_many_nodes_as_cost_no_more_than_its_chain(curve, wide):
    """model-tree's width comes from the cost curve: where rows come nearly free it may grow
    a wide tree for the price of the chain the plan chose; where each row costs a step, a
    chain's k nodes."""
    cost = COSTS[curve]
    policy = GoodputPolicy(8)
    state = DecodeState([1] * 50, 50, SamplingParams(), torch.Generator())
    policy.start(state, ARMS)
    for n in (1, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
        policy.verify.observe(n, cost(n), 50)
    policy.draft_ms["model"] = DraftCost()
    policy.draft_ms["model"].add(0.1 * cost(1))
    policy.set_up = {"model"}
    policy.acceptance.prior = 0.9
    plan = policy.budget(state).for_drafter("model")
    assert plan.depth_limit >= 1
    assert (plan.max_tokens > plan.depth_limit) is wide, plan
    assert plan.max_tokens <= 64


def test_an_arm_judged_badly_drifts_back_while_others_draft():
    """auto's suffix arm missed its first few tokens at confidence 0.9; never chosen again
    where only near-sure drafts pay, it never learned better. Its bins now age while
    other arms draft, back toward the raw confidence, so it is tried again."""

    def missed() -> Calibration:
        calibration = Calibration().for_request()
        for _ in range(3):
            calibration.observe_tried("suffix", [(0.9, False), (0.9, False)])
        return calibration

    idle, stale = missed(), missed()
    doubted = idle.probability("suffix", 0.9)
    for _ in range(200):
        idle.idle_except("ngram")
        stale.idle_except("suffix")  # the control: its own steps are not idle ones
    assert doubted < 0.3
    assert stale.rate("suffix", 0.9) < 0.3
    assert idle.rate("suffix", 0.9) > 0.85
