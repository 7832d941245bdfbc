"""tree.py: token trees as plain data, table-tested."""

from __future__ import annotations

import pytest
import torch

from adaspec.tree import ROOT, TokenTree

# Below the committed text: a -> (b -> d, c), and e beside a.
#   node:    0   1   2   3   4
#   token:  10  11  12  13  14
#   parent: ROOT 0   0   1  ROOT
BRANCHED = TokenTree((10, 11, 12, 13, 14), (ROOT, 0, 0, 1, ROOT))


@pytest.mark.parametrize(
    ("tree", "depths", "leaves", "paths"),
    [
        (TokenTree.chain([]), (), [], []),
        (TokenTree.chain([7]), (1,), [0], [[0]]),
        (TokenTree.chain([7, 8, 9]), (1, 2, 3), [2], [[0, 1, 2]]),
        (BRANCHED, (1, 2, 2, 3, 1), [2, 3, 4], [[0, 2], [0, 1, 3], [4]]),
    ],
)
def test_shape(tree, depths, leaves, paths):
    assert tree.depths == depths
    assert tree.leaves() == leaves
    assert tree.root_paths() == paths


def test_a_chain_is_the_special_case():
    assert TokenTree.chain([5, 6]).parents == (ROOT, 0)
    assert TokenTree.chain([5, 6]).is_chain and not BRANCHED.is_chain


def test_children_and_paths():
    assert BRANCHED.children() == [0, 4]
    assert BRANCHED.children(0) == [1, 2]
    assert BRANCHED.children(3) == []
    assert BRANCHED.path(3) == [0, 1, 3]
    assert BRANCHED.path_tokens(3) == [10, 11, 13]


def test_ancestor_mask():
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 0, 1, 0, 0],
            [1, 1, 0, 1, 0],
            [0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(BRANCHED.ancestor_mask(), want)
    chain = TokenTree.chain([1, 2, 3]).ancestor_mask()
    assert torch.equal(chain, torch.ones(3, 3, dtype=torch.bool).tril())  # causal


@pytest.mark.parametrize(
    ("tokens", "parents", "fragment"),
    [
        ((1, 2), (ROOT,), "parents"),
        ((1, 2), (ROOT, 1), "parents must come first"),
        ((1,), (-2,), "parents must come first"),
    ],
)
def test_malformed_trees_are_refused(tokens, parents, fragment):
    with pytest.raises(ValueError, match=fragment):
        TokenTree(tokens, parents)
