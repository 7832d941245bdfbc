"""Lossless under sampling, for every drafter x policy in the registries.

Each test samples many answers through the engine on a synthetic pair (tests/table.py) and
compares the joint of some of their tokens (ENDED after an EOS that ended an answer) with
the target's own, computed exactly by enumeration. Two settings, each testing a joint it
has the power for (tests/power.py: level 1e-3, power 0.9):

- ``t0.7-topk3``: vocabulary 4, top-k 3; 5 tokens are generated, so a first draft reaches 4
  deep, and tokens 2 to 4 are tested, where a deep draft's tokens land: 6,200 samples, 45
  cells the target allows (6 rare ones pooled), detect a total-variation error of 0.049.
- ``t1-v6-eos``: vocabulary 6 at temperature 1 without top-k, so a tree's later siblings
  meet a residual that is no point mass; token 5 is an EOS, and the prompt repeats n-grams,
  so ngram drafts long and branches; 4 tokens are generated and the first two tested:
  5,200 samples, 31 cells, detect TV 0.049.

Controls, lossy on purpose, must fail the very same test, each a drafter wrapper (no
engine internals): a draft cut by a later token's probability, a tree's siblings kept by
their own probability, siblings drawn without replacement judged against the parent's
full row, a drafted EOS left to the target, a lookup tree's branches judged against the
main path's rows. So must rules patched into verification (resampling from p, the wrong q
row, a token-dependent choice) and goodput's old look-ahead over sampled tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch

from adaspec import verify as verify_module
from adaspec.budget import Budget
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.draft import Draft
from adaspec.drafters import DRAFTERS, Drafter
from adaspec.drafters.options import DrafterOptions
from adaspec.engine import Engine
from adaspec.policies import POLICIES
from adaspec.profile import machine_profile
from adaspec.state import DecodeState
from adaspec.tree import ROOT, TokenTree
from tests.power import ALPHA, POWER, ChiSquare, chi_square
from tests.table import Clock, TableBackend, exact_answers, random_table

MAX_TV = 0.05  # every test must detect a total-variation error this large (power 0.9)
SIX = 6  # the vocabulary of the pair whose trees branch
EOS = 5  # its EOS
Pair = tuple[TableBackend, TableBackend]


def four_token_pair(clock: Clock) -> Pair:
    """A target, and a draft that agrees with it in part; on a GPU-like clock where
    verifying more rows is nearly free, so every policy drafts, and a drafted token costs
    a tenth of a target step (goodput prices it as a paid drafter, with a stop rule)."""
    return noisy_pair(random_table(4, 1.5, seed=1), random_table(4, 1.0, seed=2), clock)


def six_token_pair(clock: Clock) -> Pair:
    """As ``four_token_pair`` with 6 tokens, the last an EOS drawn like any other token:
    many answers end before their 4 tokens, and rows have tokens below model-tree's
    floor (0.05)."""
    table = random_table(SIX, 1.25, seed=3)
    return noisy_pair(table, random_table(SIX, 1.0, seed=4), clock, frozenset({EOS}))


def noisy_pair(
    table: torch.Tensor, noise: torch.Tensor, clock: Clock, eos: frozenset[int] = frozenset()
) -> Pair:
    target = TableBackend(table, clock, label="target", weight_bytes=1000, eos=eos)
    draft = TableBackend(table + noise, clock, lambda n: 1.0, "draft", 100, eos)
    return target, draft


@dataclass(frozen=True)
class Setting:
    """A pair, how it samples, its prompt, the tokens an answer may have, and the positions
    in it whose joint the test compares, over how many answers."""

    pair: Callable[[Clock], Pair]
    params: SamplingParams
    prompt: tuple[int, ...]
    generate: int
    tested: tuple[int, ...]
    samples: int

    def exact(self, target: TableBackend) -> torch.Tensor:
        """The target's own joint of the tested positions: [vocab + 1] * len(tested)."""
        joint = exact_answers(target, self.prompt, self.params, max(self.tested) + 1)
        others = [i for i in range(joint.dim()) if i not in self.tested]
        return joint.sum(others) if others else joint


SETTINGS = {
    # Token 2 ends the prompt unseen before, so the lookup has no match at first and
    # auto's goodput asks its model arm; later tokens all have matches.
    "t0.7-topk3": Setting(
        four_token_pair, SamplingParams(0.7, top_k=3), (0, 1, 2), 5, (1, 2, 3), 6200
    ),
    # "0 1" ends the prompt and occurred twice before, followed by 4 and by 2: the lookup's
    # tree branches at the root, and its copies run as long as the room.
    "t1-v6-eos": Setting(
        six_token_pair, SamplingParams(1.0), (0, 1, 2, 3, 0, 1, 4, 2, 0, 1), 4, (0, 1), 5200
    ),
}
MATRIX = [(d, p) for d in DRAFTERS.names() for p in POLICIES.names()]


def engine_for(
    drafter: str, policy: str, setting: Setting, lossy: Callable[[Draft], Draft] | None = None
) -> Engine:
    """The registry's drafter and policy on the setting's pair, as adaspec.build assembles
    them (a policy that plans with costs finds them timed), the drafts changed by ``lossy``
    where given."""
    clock = Clock()
    target, draft = setting.pair(clock)
    drafter_cls, policy_cls = DRAFTERS.get(drafter), POLICIES.get(policy)
    if policy_cls.uses_cost_profile:
        machine_profile(target, clock)
    made = drafter_cls.create(target, draft if drafter_cls.uses_draft_model else None)
    if lossy is not None:
        made = Lossy(made, lossy)
    return Engine(target, made, policy_cls.create(None, target), clock=clock)


@dataclass
class Answers:
    """Counts [vocab + 1] * len(tested) of the answers' tested tokens (ENDED after an EOS),
    and what the engine did for them: tokens verified, steps with a rejection, the deepest
    node verified, steps verifying a tree that branches, and answers ended at EOS."""

    counts: torch.Tensor
    verified: int = 0
    rejected: int = 0
    deepest: int = 0
    branched: int = 0
    ended: int = 0


def sample_answers(engine: Engine, setting: Setting) -> Answers:
    """``setting.samples`` answers, seeds 0, 1, ..., so a run is reproducible."""
    vocab = engine.target.vocab_size
    answers = Answers(torch.zeros((vocab + 1,) * len(setting.tested)))
    for seed in range(setting.samples):
        config = GenerationConfig(setting.generate, setting.params, seed=seed)
        result = engine.generate(list(setting.prompt), config)
        padded = [*result.token_ids, *[vocab] * setting.generate]
        answers.counts[tuple(padded[i] for i in setting.tested)] += 1
        answers.ended += result.finish_reason == "stop"
        for step in result.stats.steps:
            tree = TokenTree.of([0] * step.drafted, step.parents)
            answers.verified += step.drafted
            answers.rejected += step.drafted > step.accepted
            answers.deepest = max(answers.deepest, *tree.depths, 0)
            answers.branched += not tree.is_chain
    return answers


def lossless_test(engine: Engine, setting: Setting) -> tuple[ChiSquare, Answers]:
    answers = sample_answers(engine, setting)
    return chi_square(answers.counts, setting.exact(engine.target)), answers


def matrix_test(drafter: str, policy: str, setting: str) -> tuple[ChiSquare, Answers]:
    return lossless_test(engine_for(drafter, policy, SETTINGS[setting]), SETTINGS[setting])


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_the_tests_detect_a_few_percent(setting):
    """What each setting's samples buy on the joint it tests: an error of total variation
    0.049 is found with probability 0.9 at level 1e-3 in both (module docstring)."""
    chosen = SETTINGS[setting]
    exact = chosen.exact(chosen.pair(Clock())[0])
    assert chi_square(exact * chosen.samples, exact).detectable_tv() < MAX_TV


# What the settings are for, checked where it shows: the least depth that some verified
# draft reached, and configurations whose verified trees branch in a tenth of the answers.
DEEPEST = {("model", "fixed", "t0.7-topk3"): 4, ("ngram", "fixed", "t1-v6-eos"): 3}
BRANCHING = {("ngram", "goodput", "t1-v6-eos"), ("model-tree", "fixed", "t1-v6-eos")}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize(("drafter", "policy"), MATRIX)
def test_first_tokens_follow_the_target(drafter, policy, setting):
    test, answers = matrix_test(drafter, policy, setting)
    detectable = test.detectable_tv()
    assert detectable < MAX_TV, f"{test.samples} samples detect only TV >= {detectable:.3f}"
    assert test.p_value > ALPHA, f"{test}: detects TV >= {detectable:.3f} at power {POWER}"
    assert_covered((drafter, policy, setting), answers)


def assert_covered(config: tuple[str, str, str], answers: Answers) -> None:
    """Every drafter but the baseline had tokens tested and rejected; the deep drafts,
    the answers ended at EOS and the trees that branch are there."""
    drafter, _, setting = config
    if drafter != "none":
        assert answers.verified > 0 and answers.rejected > 0, answers
    if setting == "t1-v6-eos":
        assert answers.ended > SETTINGS[setting].samples // 10, answers
    assert answers.deepest >= DEEPEST.get(config, 0), answers
    if config in BRANCHING:
        assert answers.branched > SETTINGS[setting].samples // 10, answers


class Lossy:
    """A drafter whose every draft ``change`` alters after it is drawn: a lossy control.
    All else is the wrapped drafter's, a request's copy (``open``) wrapped too."""

    def __init__(self, inner: Drafter, change: Callable[[Draft], Draft]) -> None:
        self.inner, self.change = inner, change

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open(self, state: DecodeState) -> Lossy:
        return Lossy(self.inner.open(state), self.change)

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        return self.change(self.inner.propose(state, budget))


def cut_by_a_later_token(draft: Draft) -> Draft:
    """From the second token on, token i verified only if the draft gave token i + 1 a
    probability of at least 0.3: whether x_i is verified depends on x_{i+1}, drawn after
    it. It acts only on drafts of 3 tokens or more."""
    for i in range(1, len(draft.tokens) - 1):
        if float(draft.probs[i + 1, draft.tokens[i + 1]]) < 0.3:
            return draft.prefix(i)
    return draft


def keep_siblings_by_their_own_probability(draft: Draft, floor: float = 0.05) -> Draft:
    """A tree's nodes kept while their path's chance times their own q clears the floor
    (model-tree's), a node's later children dropped once one does not: whether a node is
    tried depends on the token drawn for it."""
    chance = {ROOT: 1.0}
    closed: set[int] = set()
    for i, parent in enumerate(draft.parents or ()):
        if parent not in chance or parent in closed:
            continue
        own = chance[parent] * float(draft.probs[i, draft.tokens[i]])
        if own < floor:
            closed.add(parent)
        else:
            chance[i] = own
    return draft_of_nodes(draft, sorted(set(chance) - {ROOT}))


def draft_of_nodes(draft: Draft, keep: list[int]) -> Draft:
    """The draft's nodes ``keep`` (each one's parent kept too), renumbered."""
    if not keep:
        return Draft(source=draft.source)
    new = {ROOT: ROOT, **{old: i for i, old in enumerate(keep)}}
    return Draft(
        tokens=[draft.tokens[i] for i in keep],
        probs=draft.probs[keep],
        confidences=[draft.confidences[i] for i in keep],
        source=draft.source,
        parents=tuple(new[draft.parents[i]] for i in keep),
    )


def full_row_for_every_sibling(draft: Draft) -> Draft:
    """Each sibling judged against the row its first sibling was drawn from (the parent's
    full row), not the row renormalised over the tokens not drawn yet."""
    first: dict[int, int] = {}
    probs = draft.probs.clone()
    for i, parent in enumerate(draft.parents or ()):
        probs[i] = draft.probs[first.setdefault(parent, i)]
    return replace(draft, probs=probs)


def leave_eos_to_the_target(draft: Draft) -> Draft:
    """A chain cut before its first drafted EOS, for the target to emit: whether a token is
    verified depends on the token itself."""
    return draft.prefix(draft.tokens.index(EOS)) if EOS in draft.tokens else draft


def branch_rows_by_depth(draft: Draft) -> Draft:
    """A lookup tree's nodes each judged against the one-hot row of the main path's token
    at its depth, as a chain's rows are indexed: right on the main path, wrong on a branch."""
    if draft.parents is None or draft.probs is not None or not draft.tokens:
        return draft
    tree = draft.tree
    main, node = [], ROOT
    while tree.children(node):
        node = tree.children(node)[0]
        main.append(tree.tokens[node])
    rows = torch.tensor([main[depth - 1] for depth in tree.depths])  # [n]
    return replace(draft, probs=torch.nn.functional.one_hot(rows, SIX).float())


# control: (drafter, policy, setting, change)
LOSSY_DRAFTERS = {
    "cut-by-a-later-token": ("model", "fixed", "t0.7-topk3", cut_by_a_later_token),
    "self-cut-by-a-later-token": ("self", "fixed", "t0.7-topk3", cut_by_a_later_token),
    "siblings-by-own-probability": (
        "model-tree",
        "fixed",
        "t1-v6-eos",
        keep_siblings_by_their_own_probability,
    ),
    "full-row-for-siblings": ("model-tree", "fixed", "t1-v6-eos", full_row_for_every_sibling),
    "eos-left-to-the-target": ("model", "fixed", "t1-v6-eos", leave_eos_to_the_target),
    "branch-rows-by-depth": ("ngram", "fixed", "t1-v6-eos", branch_rows_by_depth),
}


@pytest.mark.parametrize("control", list(LOSSY_DRAFTERS))
def test_a_lossy_drafter_fails_the_same_test(control):
    """Each error passed the suite when it generated 3 tokens on a 4-token vocabulary
    from a prompt without repeats (issue 31); the settings above are built to see it."""
    drafter, policy, name, change = LOSSY_DRAFTERS[control]
    setting = SETTINGS[name]
    test, answers = lossless_test(engine_for(drafter, policy, setting, change), setting)
    assert answers.verified > 0
    assert test.p_value < ALPHA, f"the control {control} passed: {test}"


def keep_q_one_row_late(verify):
    """A lossy rule: token i is judged against the draft's row for token i - 1."""

    def wrong_row(logits, tree, probs, params, generator):
        shifted = probs.roll(1, dims=0) if probs is not None else None
        return verify(logits, tree, shifted, params, generator)

    return wrong_row


def verify_only_a_drafted_zero(self, policy, proposal) -> int:
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
    test, answers = matrix_test("model", "fixed", setting)
    assert answers.verified > 0
    assert test.p_value < ALPHA, f"the control {control} passed: {test}"


def rows(*probabilities: tuple[float, ...]) -> torch.Tensor:
    """Logits [vocab] for each next-token distribution given (zeros allowed)."""
    return torch.tensor(probabilities, dtype=torch.float64).clamp_min(1e-9).log()


def trim_sensitive_pair(clock: Clock) -> Pair:
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
        return table[None].expand(4, 4, 4).clone()  # [before, last, vocab]

    def three_rows_for_one(n: int) -> float:
        return 10.0 if n <= 3 else 30.0 + n

    target = TableBackend(by_last_token(target_rows), clock, three_rows_for_one, "target")
    draft = TableBackend(by_last_token(draft_rows), None, label="draft", weight_bytes=100)
    return target, draft


# 6000 samples of the first three tokens detect TV >= 0.044 at power 0.9 (pooled cells
# included).
TRIM_SENSITIVE = Setting(trim_sensitive_pair, SamplingParams(1.0), (3,), 3, (0, 1, 2), 6000)


def goodput_on_the_trim_sensitive_pair() -> tuple[ChiSquare, Answers]:
    return lossless_test(engine_for("model", "goodput", TRIM_SENSITIVE), TRIM_SENSITIVE)


def test_goodput_never_cuts_a_sampled_draft_by_its_own_tokens():
    """The bug of issue 24: goodput chose the prefix of a sampled draft to verify from
    every drafted token's confidence, so whether token 1 was verified depended on token
    1's value."""
    test, answers = goodput_on_the_trim_sensitive_pair()
    assert answers.verified > 0
    assert test.detectable_tv() < 0.05
    assert test.p_value > ALPHA, test


def test_trimming_a_sampled_draft_by_look_ahead_fails_the_same_test(monkeypatch):
    """The old rule (the policy's look-ahead over every drafted token, sampled or not)
    restored: the test above must fail."""
    monkeypatch.setattr(Engine, "_to_verify", lambda self, policy, proposal: policy.trim(proposal))
    test, answers = goodput_on_the_trim_sensitive_pair()
    assert answers.verified > 0
    assert test.p_value < ALPHA, test


def test_a_windowed_draft_model_stays_lossless():
    """A draft that sees the text's first 4 tokens and its last one only (window 1): its
    rows differ from what the whole text would give (the table reads the last two tokens),
    and the answers are still the target's."""
    setting = SETTINGS["t1-v6-eos"]
    clock = Clock()
    target, draft = setting.pair(clock)
    windowed = DRAFTERS.get("model").create(target, draft, DrafterOptions(draft_window=1))
    engine = Engine(target, windowed, POLICIES.get("fixed").create(None, target), clock=clock)
    test, answers = lossless_test(engine, setting)
    assert answers.verified > 0 and answers.rejected > 0
    assert test.p_value > ALPHA, f"{test}: detects TV >= {test.detectable_tv():.3f}"
