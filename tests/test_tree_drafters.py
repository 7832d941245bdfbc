"""The tree-growing drafters and the engine's tree path: best-first growth (pure), what
recycling and ADED learn from the verify pass, limits inside a tree (EOS, max_new_tokens),
and the joint of the first two tokens through the engine when the draft model grows a tree
with several candidates at the root, with a wrong residual update as a control."""

from __future__ import annotations

import pytest
import torch

from adaspec.budget import Budget
from adaspec.build import EngineSpec, build_engine
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.drafters.aded import AdedDrafter
from adaspec.drafters.growth import grow
from adaspec.drafters.recycling import RecyclingDrafter, recycled_confidence
from adaspec.state import DecodeState
from adaspec.stats import RowsSeen, StepOutcome
from adaspec.tree import ROOT
from tests.power import ALPHA, chi_square
from tests.table import Clock, TableBackend, exact_joint, random_table

SCORES = {
    1: [(2, 0.6, 0.6), (3, 0.4, 0.4)],
    2: [(4, 0.9, 0.9)],
    3: [(5, 0.5, 0.5)],
    4: [(6, 0.1, 0.1)],
}


def table_candidates(before: int, token: int):
    return SCORES.get(token, [])


@pytest.mark.parametrize(
    ("nodes", "depth", "tokens", "parents"),
    [
        (1, 8, [2], (ROOT,)),
        # path scores: 2: 0.6, 4: 0.54, 3: 0.4, 5: 0.2, 6: 0.054
        (4, 8, [2, 4, 3, 5], (ROOT, 0, ROOT, 2)),
        (8, 8, [2, 4, 3, 5, 6], (ROOT, 0, ROOT, 2, 1)),
        (8, 1, [2, 3], (ROOT, ROOT)),
    ],
)
def test_growth_adds_the_likeliest_path_first(nodes, depth, tokens, parents):
    grown = grow(0, 1, table_candidates, nodes, depth)
    assert (grown.tokens, grown.parents) == (tokens, parents)


def outcome_with_rows(before, fed, top_ids, top_probs) -> StepOutcome:
    rows = RowsSeen(tuple(before), tuple(fed), tuple(top_ids), tuple(top_probs))
    return StepOutcome(0, 0, 1, 0.0, 0.0, rows=rows)


def state_of(tokens: list[int]) -> DecodeState:
    return DecodeState(list(tokens), len(tokens), SamplingParams(), torch.Generator())


def test_recycling_drafts_what_the_target_scored_after_each_token():
    drafter = RecyclingDrafter(vocab_size=10, width=2)
    assert drafter.propose(state_of([1, 2]), Budget(4)).tokens == []  # nothing seen yet
    drafter.observe(outcome_with_rows([1, 2], [2, 7], [(7, 3), (8, 9)], [(0.8, 0.1), (0.6, 0.3)]))
    draft = drafter.propose(state_of([1, 2]), Budget(4))
    # 2 -> 7 (0.8) -> 8 (0.48); 2 -> 3 (0.1); 7 -> 9 (0.24)
    assert draft.tokens == [7, 8, 9, 3]
    assert draft.parents == (ROOT, 0, 0, ROOT)
    assert draft.confidences == pytest.approx(
        [recycled_confidence(p) for p in (0.8, 0.6, 0.3, 0.1)]
    )
    assert drafter.propose(state_of([1, 2]), Budget(8, max_depth=1)).tokens == [7, 3]


def test_aded_learns_trigrams_from_the_prompt_and_the_rows():
    drafter = AdedDrafter(width=2, exploration=0.0)
    state = state_of([5, 6, 7, 5, 6])
    drafter.start(state)
    draft = drafter.propose(state, Budget(3))
    assert draft.tokens[:2] == [7, 5]  # (5, 6) -> 7, then (6, 7) -> 5
    drafter.observe(outcome_with_rows([5], [6], [(9,)], [(1.0,)]))  # the target's view
    drafter.observe(outcome_with_rows([5], [6], [(9,)], [(1.0,)]))
    assert drafter.propose(state, Budget(1)).tokens == [9]


def test_aded_explores_a_candidate_not_tried_yet():
    drafter = AdedDrafter(width=2, exploration=1.0)
    state = state_of([1, 2, 3, 1, 2, 3, 1, 2, 4, 1, 2])
    drafter.start(state)
    first = drafter.propose(state, Budget(1)).tokens
    assert first == [3]  # (1, 2) -> 3 twice, -> 4 once
    drafted = []
    for _ in range(3):  # each draft rejected
        drafted += drafter.propose(state, Budget(1)).tokens
        drafter.observe(StepOutcome(1, 0, 1, 0.0, 0.0, drafter="aded", parents=(ROOT,)))
    assert drafted[0] == 3 and 4 in drafted  # the rarer one is tried after a miss


def cyclic_table(vocab: int = 6) -> torch.Tensor:
    table = torch.full((vocab, vocab, vocab), -20.0, dtype=torch.float64)
    for last in range(vocab):
        table[:, last, (last + 1) % vocab] = 20.0
    return table


@pytest.mark.parametrize("drafter", ["recycling", "aded", "model-tree"])
def test_a_tree_stops_at_eos_and_at_max_new_tokens(drafter):
    """The target counts 0 1 2 3 4 5 0 ...; with 4 as EOS the answer ends at the first 4,
    and without EOS exactly max_new_tokens come out, however deep the tree reaches."""
    clock = Clock()
    target = TableBackend(cyclic_table(), clock, eos=frozenset({4}))
    draft = TableBackend(cyclic_table(), clock, lambda n: 1.0, label="d", weight_bytes=100)
    engine = build_engine(
        EngineSpec(drafter=drafter, policy="fixed", k=8), target, draft, clock=clock
    )
    prompt = [0, 1, 2, 3, 4, 5] * 3 + [0]
    for _ in range(3):  # recycling learns from the first requests
        result = engine.generate(prompt, GenerationConfig(max_new_tokens=20))
        assert result.token_ids == [1, 2, 3, 4] and result.finish_reason == "stop"
    for n in (1, 2, 5, 13):
        config = GenerationConfig(max_new_tokens=n, stop_at_eos=False)
        result = engine.generate(prompt, config)
        assert result.token_ids == [(1 + i) % 6 for i in range(n)]
    assert any(s.accepted >= 2 for s in result.stats.steps)


PROMPT = [0, 1, 2]
SAMPLES = 8000  # the first two tokens: 16 cells, detects TV >= 0.037 at power 0.9


def model_tree_joint(params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Counts [vocab, vocab] of the first two tokens from model-tree:fixed, the exact
    joint, and how many first steps drafted two or more candidates at the root."""
    clock = Clock()
    table = random_table(4, 1.0, seed=5)
    target = TableBackend(table, clock)
    draft = TableBackend(table + random_table(4, 1.0, seed=6), clock, lambda n: 1.0, label="d")
    engine = build_engine(
        EngineSpec(drafter="model-tree", policy="fixed", k=3), target, draft, clock=clock
    )
    engine.drafter.floor = 0.15  # branch wherever a second token is plausible
    counts = torch.zeros(4, 4)
    wide = 0
    for seed in range(SAMPLES):
        result = engine.generate(PROMPT, GenerationConfig(2, params, seed=seed))
        counts[tuple(result.token_ids)] += 1
        first = result.stats.steps[0]
        wide += first.parents is not None and first.parents.count(ROOT) >= 2
    return counts, exact_joint(target, PROMPT, params, 2), wide


def test_a_sampled_tree_with_several_root_candidates_follows_the_target():
    counts, exact, wide = model_tree_joint(SamplingParams(1.0))
    test = chi_square(counts, exact)
    assert test.detectable_tv() < 0.04
    assert wide > SAMPLES // 4  # the root had two or more candidates often
    assert test.p_value > ALPHA, test


def test_a_wrong_residual_update_between_siblings_fails_it(monkeypatch):
    monkeypatch.setattr("adaspec.verify.residual", lambda r, q: r)  # r left as it was
    counts, exact, _ = model_tree_joint(SamplingParams(1.0))
    assert chi_square(counts, exact).p_value < ALPHA
