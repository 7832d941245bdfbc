"""Growing a draft tree best first: the pure core the model-free tree drafters share.

From the root (the last committed token) the frontier node whose whole path is likeliest
(the product of its nodes' scores) is added next, until the budget's nodes or depth run
out. Nodes come out in that order, so a parent precedes its children and every prefix of
the nodes is the best tree of its size by the same scores: a policy that verifies fewer
nodes keeps a prefix and still keeps the likeliest ones (DySpec's greedy expansion).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adaspec.tree import ROOT

# What may follow ``(before, token)``: (next token, score in [0, 1] used to grow the tree,
# the drafter's confidence that the target accepts it), best first.
Candidates = Callable[[int, int], Sequence[tuple[int, float, float]]]


@dataclass(frozen=True)
class GrownTree:
    tokens: list[int]  # [n]
    parents: tuple[int, ...]  # [n] (tree.ROOT for the first level)
    confidences: list[float]  # [n] P(accepted | parent accepted), the drafter's estimate
    contexts: list[tuple[int, int]]  # [n] the (before, token) ``candidates`` offered it after


def grow(
    before: int, root: int, candidates: Candidates, max_nodes: int, max_depth: int
) -> GrownTree:
    """Best-first expansion below ``root`` (which follows ``before``). Invariant: a node
    is pushed only once its parent is out, so parents come first."""
    tokens: list[int] = []
    parents: list[int] = []
    confidences: list[float] = []
    contexts: list[tuple[int, int]] = []
    frontier: list[tuple[float, int, int, int, float, int, tuple[int, int]]] = []  # -score...
    order = 0

    def push(parent: int, context: tuple[int, int], path: float, depth: int) -> None:
        nonlocal order
        if depth > max_depth:
            return
        for child, score, confidence in candidates(*context):
            entry = (-path * score, order, parent, child, confidence, depth, context)
            heapq.heappush(frontier, entry)
            order += 1

    push(ROOT, (before, root), 1.0, 1)
    while frontier and len(tokens) < max_nodes:
        negative, _, parent, token, confidence, depth, context = heapq.heappop(frontier)
        node = len(tokens)
        tokens.append(token)
        parents.append(parent)
        confidences.append(confidence)
        contexts.append(context)
        push(node, (context[1], token), -negative, depth + 1)
    return GrownTree(tokens, tuple(parents), confidences, contexts)
