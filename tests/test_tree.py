"""tree.py: token trees as plain data, table-tested."""

from __future__ import annotations

import pytest
import torch

from adaspec.tree import ROOT, TokenTree, common_prefix, is_chain

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


def test_rooted_hangs_the_tree_below_a_fed_token():
    tree = TokenTree((11, 12, 13), (ROOT, 0, ROOT))
    fed = tree.rooted(7)
    assert fed.tokens == (7, 11, 12, 13) and fed.parents == (ROOT, 0, 1, 0)


def test_paths_come_depth_first_with_the_first_children_last():
    """Paths sharing a prefix are neighbours (a backend scoring path by path decodes each
    node once), and the path through every first child is the last (committing it is a
    rollback)."""
    tree = TokenTree((1, 2, 3, 4, 5, 6), (ROOT, ROOT, 0, 0, 2, 1))
    assert tree.dfs_paths() == [[1, 5], [0, 3], [0, 2, 4]]
    assert TokenTree.chain([4, 5]).dfs_paths() == [[0, 1]]


def test_is_chain_and_common_prefix():
    assert is_chain(()) and is_chain((ROOT, 0, 1)) and not is_chain((ROOT, ROOT))
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and common_prefix([], [1]) == 0
