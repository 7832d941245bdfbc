from __future__ import annotations

import pytest
import torch

from adaspec.budget import Budget
from adaspec.config import SamplingParams
from adaspec.drafters.ngram import (
    NgramDrafter,
    continuation_tree,
    copy_confidences,
    earlier_continuations,
    match_confidence,
    prompt_lookup,
)
from adaspec.state import DecodeState
from adaspec.tree import ROOT


@pytest.mark.parametrize(
    ("tokens", "k", "expected"),
    [
        ([1, 2, 3, 4, 1, 2, 3], 2, [4, 1]),  # trigram match continues with what followed
        ([1, 2, 3, 9, 8, 2, 3], 3, [9, 8, 2]),  # bigram (2, 3) when the trigram is new
        ([5, 6, 7, 5], 2, [6, 7]),  # unigram fallback
        ([1, 2, 3, 4], 3, []),  # nothing repeats
        ([7], 3, []),  # too short to match anything
        ([1, 2, 3, 1, 2, 3], 5, [1, 2, 3, 1, 2]),  # copy runs into its own output (period 3)
        ([4, 4], 3, [4, 4, 4]),
        ([1, 2, 0, 1, 2, 5, 1, 2], 1, [5]),  # the most recent occurrence wins
        ([1, 2, 3, 1, 2, 3], 0, []),
    ],
)
def test_prompt_lookup_table(tokens, k, expected):
    assert prompt_lookup(tokens, k) == expected


def test_min_ngram_limits_fallback():
    assert prompt_lookup([5, 6, 7, 5], 2, max_ngram=3, min_ngram=2) == []


def test_each_copied_token_has_the_confidence_of_the_match_it_extends():
    """Token i of a copy is tested only after i accepted ones, when the text ends in an
    (n + i)-gram seen before."""
    assert copy_confidences(2, 3) == [match_confidence(2), match_confidence(3), match_confidence(4)]
    assert copy_confidences(0, 3) == []
    draft = NgramDrafter().propose(
        DecodeState([5, 6, 7, 8, 9, 5, 6], 7, SamplingParams(), torch.Generator()), Budget(3)
    )
    assert draft.tokens == [7, 8, 9]
    assert draft.confidences == copy_confidences(2, 3)
    assert draft.confidences[0] < draft.confidences[1] < draft.confidences[2]


def test_earlier_occurrences_branch_where_their_continuations_differ():
    tokens = [1, 2, 3, 4, 9, 1, 2, 3, 5, 9, 1, 2]  # "1 2" was followed by 3 4 and by 3 5
    found = earlier_continuations(tokens, 3, 3, 1, most=3)
    assert found == [([3, 5, 9], 3), ([3, 4, 9], 2)]  # "9 1 2" matched once, "1 2" twice
    nodes, parents, origin = continuation_tree([c for c, _ in found], max_nodes=8)
    assert (nodes, parents, origin) == ([3, 5, 9, 4, 9], (ROOT, 0, 1, 0, 3), [0, 0, 0, 1, 1])
    assert continuation_tree([c for c, _ in found], max_nodes=4)[0] == [3, 5, 9, 4]


def test_the_lookup_drafts_a_tree_only_where_the_budget_has_room_for_one():
    state = DecodeState(
        [1, 2, 3, 4, 9, 1, 2, 3, 5, 9, 1, 2], 12, SamplingParams(), torch.Generator()
    )
    drafter = NgramDrafter()
    chain = drafter.propose(state, Budget(3))
    assert (chain.tokens, chain.parents) == ([3, 5, 9], None)
    tree = drafter.propose(state, Budget(8, max_depth=3))
    assert tree.tokens == [3, 5, 9, 4, 9] and tree.parents == (ROOT, 0, 1, 0, 3)
    assert tree.confidences[3] < tree.confidences[1]  # the older branch is less likely
