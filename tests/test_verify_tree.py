"""verify_tree on synthetic distributions: greedy tables, then the joint of the first
two tokens under multi-candidate sampling, with a control that must fail."""

from __future__ import annotations

import pytest
import torch

from adaspec.config import SamplingParams
from adaspec.sampling import sample
from adaspec.tree import ROOT, TokenTree
from adaspec.verify import Judgement, judge_unverified, verify_greedy, verify_tree
from tests.power import ALPHA, chi_square

VOCAB = 4
SAMPLES = 10_000  # 16 cells: detects TV >= 0.033 at power 0.9


def rows_for(argmaxes: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(argmaxes), 8).double() * 5.0


@pytest.mark.parametrize(
    ("tree", "argmax", "path", "tokens"),
    [
        (TokenTree.chain([]), [3], [], [3]),
        (TokenTree.chain([1, 2]), [1, 2, 5], [0, 1], [1, 2, 5]),
        (TokenTree.chain([1, 2]), [1, 4, 5], [0], [1, 4]),
        # root children 1 and 2; 1 -> 3, 2 -> 4
        (TokenTree((1, 2, 3, 4), (ROOT, ROOT, 0, 1)), [2, 0, 4, 0, 7], [1, 3], [2, 4, 7]),
        (TokenTree((1, 2, 3, 4), (ROOT, ROOT, 0, 1)), [1, 3, 0, 6, 0], [0, 2], [1, 3, 6]),
        (TokenTree((1, 2, 3, 4), (ROOT, ROOT, 0, 1)), [5, 0, 0, 0, 0], [], [5]),
    ],
)
def test_greedy_table(tree, argmax, path, tokens):
    verdict = verify_tree(rows_for(argmax), tree, None, SamplingParams())
    assert (verdict.path, verdict.tokens) == (path, tokens)


@pytest.mark.parametrize(
    ("committed", "judged", "complete"),
    [
        ([1, 3, 9], [(0, True), (1, False), (2, True)], True),  # down 1 -> 3, a leaf
        ([1, 3], [(0, True), (1, False), (2, True)], True),
        ([2, 5], [(0, False), (1, True), (3, False)], True),  # 2, then not its child 4
        ([7], [(0, False), (1, False)], True),  # no first-level node
        ([2], [(0, False), (1, True)], False),  # 4 below 2 waits for the next token
        ([], [], False),  # nothing committed yet
    ],
)
def test_a_draft_not_verified_is_judged_by_the_committed_tokens(committed, judged, complete):
    """Each node whose parent matched is judged, as a verify judges them; the walk ends at
    the first level none of whose nodes matched, or at a leaf."""
    tree = TokenTree((1, 2, 3, 4), (ROOT, ROOT, 0, 1))
    assert judge_unverified(tree, committed) == Judgement(judged, complete)


def test_judging_by_a_greedy_verdicts_tokens_finds_its_path():
    """Under greedy decoding the judgement is the verdict itself: judged by the tokens a
    verify of the same tree emitted, the matched nodes are its accepted path."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(0, 7, (1,), generator=generator))
        parents = tuple(int(torch.randint(-1, i, (1,), generator=generator)) for i in range(n))
        tree = TokenTree(tuple(torch.randint(0, 3, (n,), generator=generator).tolist()), parents)
        if any(
            len({tree.tokens[c] for c in tree.children(node)}) < len(tree.children(node))
            for node in (ROOT, *range(n))
        ):
            continue  # siblings with one token: a lookup never proposes them
        logits = torch.randn(n + 1, 3, generator=generator)
        verdict = verify_tree(logits, tree, None, SamplingParams())
        judgement = judge_unverified(tree, verdict.tokens)
        assert judgement.complete
        matched = [node for node, ok in judgement.judged if ok]
        assert matched == verdict.path


def test_greedy_on_a_chain_is_the_chain_rule():
    argmax = [1, 2, 6, 0]
    chain = verify_tree(rows_for(argmax), TokenTree.chain([1, 2, 3]), None, SamplingParams())
    assert chain.tokens == verify_greedy(rows_for(argmax), [1, 2, 3]).tokens


@pytest.fixture(scope="module")
def pair():
    """p1 the target's first-token distribution, p2[a] its next one after a; q1, q2[a] the
    draft's, disagreeing with the target."""
    g = torch.Generator().manual_seed(3)

    def rows(n: int, scale: float) -> torch.Tensor:
        return torch.softmax(torch.randn(n, VOCAB, dtype=torch.float64, generator=g) * scale, -1)

    return rows(1, 1.2)[0], rows(VOCAB, 1.2), rows(1, 2.5)[0], rows(VOCAB, 2.5)


def draw_tree(pair, siblings: int, mode: str, g: torch.Generator):
    """A two-level tree: ``siblings`` first-level candidates, one child under each; its
    target logits [n + 1, vocab] and the q row each node was drawn from."""
    p1, p2, q1, q2 = pair
    tokens, parents, q_rows = [], [], []
    remaining = q1.clone()
    for _ in range(siblings):
        if mode == "distinct":  # a deterministic drafter's fixed candidates
            q_j = torch.nn.functional.one_hot(torch.tensor(len(tokens)), VOCAB).double()
        else:
            q_j = remaining / remaining.sum()
        x = sample(q_j, g)
        if mode == "without-replacement":
            remaining = remaining.clone()
            remaining[x] = 0.0
        tokens.append(x)
        parents.append(ROOT)
        q_rows.append(q_j)
    for first in range(siblings):  # one child under each first-level node
        a = tokens[first]
        tokens.append(sample(q2[a], g))
        parents.append(first)
        q_rows.append(q2[a])
    target = [p1, *(p2[t] for t in tokens[:siblings]), *([p1] * siblings)]
    logits = torch.stack(target).log()  # [n + 1, vocab]; the leaves' rows score token 3
    return TokenTree(tuple(tokens), tuple(parents)), logits, torch.stack(q_rows)


def sampled_joint(pair, siblings: int, mode: str, samples: int = SAMPLES) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    counts = torch.zeros(VOCAB, VOCAB)
    for _ in range(samples):
        tree, logits, q = draw_tree(pair, siblings, mode, g)
        q = None if mode == "distinct" else q
        tokens = verify_tree(logits, tree, q, SamplingParams(1.0), g).tokens
        if len(tokens) == 1:  # the first level was rejected: the next step is a plain one
            tokens.append(sample(pair[1][tokens[0]], g))
        counts[tokens[0], tokens[1]] += 1
    return counts


def exact_joint(pair) -> torch.Tensor:
    p1, p2, _, _ = pair
    return p1[:, None] * p2  # [vocab, vocab]


@pytest.mark.parametrize(
    ("siblings", "mode"),
    [(1, "iid"), (3, "iid"), (3, "without-replacement"), (2, "distinct")],
)
def test_the_first_two_tokens_follow_the_target(pair, siblings, mode):
    test = chi_square(sampled_joint(pair, siblings, mode), exact_joint(pair))
    assert test.detectable_tv() < 0.04
    assert test.p_value > ALPHA, test


def test_a_residual_not_updated_between_siblings_fails(pair, monkeypatch):
    """The control: trying every sibling against p itself, rather than against what the
    target still owes after the rejected ones, overweights the draft's favourites."""
    monkeypatch.setattr("adaspec.verify.residual", lambda r, q: r)
    test = chi_square(sampled_joint(pair, 3, "iid"), exact_joint(pair))
    assert test.p_value < ALPHA, test
