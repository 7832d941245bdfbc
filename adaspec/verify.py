"""Lossless acceptance of a draft, a token tree (a chain is one): the one place that
decides which drafted tokens are kept.

Terms (as in vLLM's rejection sampler): accepted - the draft nodes kept, a root path;
recovered - the token the target puts after them when the walk stops at a rejection;
bonus - the extra target token after an accepted leaf. Every step therefore yields one
token more than it accepts, so decoding never goes slower in tokens per pass than
autoregressive decoding, which is the empty tree of the same rule.

Notation follows Leviathan et al. / Chen et al. (2023): p = target, q = draft. Rows: row 0
of the target's logits scores the first level (the token after the committed text), row
i + 1 scores the children of node i. The walk starts at the root and, at each node, tries
its children in index order:

  greedy:   descend into the child whose token is the target's argmax; if none is, stop
            and emit the argmax (identical to greedy autoregressive decoding).
  sampling: recursive rejection sampling (SpecInfer; Recursive Speculative Decoding).
            With residual r = p at the node, for each child c_j (drawn from q_j):
              accept c_j with probability min(1, r(c_j) / q_j(c_j)) and descend;
              else r <- norm(max(0, r - q_j)) and try the next child.
            If every child is rejected, emit a token drawn from r; after a leaf is
            accepted, draw the bonus token from the leaf's row.

Each try emits exactly r's distribution whatever q_j is (given what came before), so any
set of siblings is exact: drawn independently from one q, drawn without replacement (q_j
renormalised over the tokens not drawn yet), or fixed tokens (q_j one-hot). With one child
per node this is the chain rule of speculative sampling. It needs which nodes exist to
depend only on what was known before each was drawn (docs/methods.md). Pure functions of
tensors and an RNG: no model in here, so it is tested exhaustively.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adaspec.config import SamplingParams
from adaspec.sampling import probabilities, sample
from adaspec.tree import ROOT, TokenTree


@dataclass(frozen=True)
class TreeVerdict:
    path: list[int]  # accepted node indices, from the first level down
    tokens: list[int]  # [len(path) + 1]: the accepted tokens, then the recovered or bonus one


def verify_tree(
    target_logits: torch.Tensor,  # [n + 1, vocab]: row 0 the root's, row i + 1 node i's
    tree: TokenTree,
    draft_probs: torch.Tensor | None,  # [n, vocab] q_j each node was drawn from; None: one-hot
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> TreeVerdict:
    if target_logits.shape[0] != len(tree) + 1:
        raise ValueError(f"need {len(tree) + 1} target rows for a {len(tree)}-node tree")
    if params.greedy:
        return walk_greedy(target_logits.argmax(-1).tolist(), tree)
    p = probabilities(target_logits, params)  # [n + 1, vocab]
    return walk_sampling(p, tree, draft_probs, generator)


def walk_greedy(choice: list[int], tree: TokenTree) -> TreeVerdict:
    """``choice``: [n + 1] the target's argmax at each row."""
    path: list[int] = []
    node = ROOT
    while True:
        want = choice[node + 1]
        match = next((c for c in tree.children(node) if tree.tokens[c] == want), None)
        if match is None:
            return TreeVerdict(path, [*(tree.tokens[i] for i in path), want])
        path.append(match)
        node = match


def walk_sampling(
    p: torch.Tensor,  # [n + 1, vocab]
    tree: TokenTree,
    q: torch.Tensor | None,  # [n, vocab]
    generator: torch.Generator | None,
) -> TreeVerdict:
    path: list[int] = []
    node = ROOT
    while True:
        r = p[node + 1]  # [vocab] what the target owes at this node
        accepted = None
        for child in tree.children(node):
            x = tree.tokens[child]
            q_j = _draft_row(q, child, x, r)
            u = float(torch.rand(1, generator=generator))
            if u * float(q_j[x]) < float(r[x]):  # u < r/q, without dividing by q
                accepted = child
                break
            r = residual(r, q_j)
        if accepted is None:
            return TreeVerdict(path, [*(tree.tokens[i] for i in path), sample(r, generator)])
        path.append(accepted)
        node = accepted


def _draft_row(q: torch.Tensor | None, node: int, token: int, like: torch.Tensor) -> torch.Tensor:
    if q is not None:
        return q[node].to(like.device, like.dtype)
    return torch.nn.functional.one_hot(torch.tensor(token), like.shape[-1]).to(like.dtype)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) [vocab]: what the target still owes after a rejected draw from
    q. Its mass is > 0 whenever a rejection is possible; falling back to p only absorbs
    float round-off."""
    owed = (p - q).clamp_min(0.0)  # [vocab]
    mass = owed.sum()
    return owed / mass if mass > 0 else p


@dataclass(frozen=True)
class Verdict:
    """A chain's outcome: the accepted prefix, then the recovered or bonus token."""

    tokens: list[int]  # [n_accepted + 1]
    n_accepted: int


def verify(
    target_logits: torch.Tensor,  # [k + 1, vocab]: row i scores the token after x_1..x_i
    draft_tokens: Sequence[int],  # [k]
    draft_probs: torch.Tensor | None,  # [k, vocab] warped q rows; None = deterministic
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Verdict:
    """``verify_tree`` on a chain."""
    verdict = verify_tree(
        target_logits, TokenTree.chain(draft_tokens), draft_probs, params, generator
    )
    return Verdict(verdict.tokens, len(verdict.path))


def verify_greedy(target_logits: torch.Tensor, draft_tokens: Sequence[int]) -> Verdict:
    verdict = walk_greedy(target_logits.argmax(-1).tolist(), TokenTree.chain(draft_tokens))
    return Verdict(verdict.tokens, len(verdict.path))


def verify_sampling(
    p: torch.Tensor,  # [k + 1, vocab] target probabilities, already warped
    draft_tokens: Sequence[int],  # [k], x_i drawn from q_i
    q: torch.Tensor | None,  # [k, vocab]; None means one-hot at x_i (n-gram drafts)
    generator: torch.Generator | None = None,
) -> Verdict:
    verdict = walk_sampling(p, TokenTree.chain(draft_tokens), q, generator)
    return Verdict(verdict.tokens, len(verdict.path))


@dataclass(frozen=True)
class Judgement:
    """A draft's nodes as a verify would judge them, were the given tokens the target's."""

    judged: list[tuple[int, bool]]  # (node, matched) of each node whose parent matched
    complete: bool  # the walk ended in the draft (a level matched nowhere, or a leaf)


def judge_unverified(tree: TokenTree, committed: Sequence[int]) -> Judgement:
    """Under greedy decoding exactly a verify's verdict; under sampling, for fixed tokens
    (a lookup's), a node matches with the probability that the target accepts it. Not
    complete while the committed tokens end before the walk does."""
    judged: list[tuple[int, bool]] = []
    node = ROOT
    for token in committed:
        children = tree.children(node)
        match = next((c for c in children if tree.tokens[c] == token), None)
        judged += [(c, c == match) for c in children]
        if match is None:
            return Judgement(judged, True)
        node = match
    return Judgement(judged, not tree.children(node))
