"""Token trees: the shape of a draft with several candidates per position.

A draft is a tree below the last committed token (the root, not a node). Nodes are stored
in an order where a parent comes before its children (``parents[i] < i``), so one pass in
index order visits every path top-down; a chain is the tree whose node i hangs under
node i - 1. Pure data and functions: the engine, the backends and verification share
this one description of a tree (issue 26).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

ROOT = -1  # the parent index of a node that hangs directly under the committed text


@dataclass(frozen=True)
class TokenTree:
    tokens: tuple[int, ...]  # [n] token id of each node
    parents: tuple[int, ...]  # [n] index of each node's parent, ROOT for the first level

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.parents)} parents")
        for i, parent in enumerate(self.parents):
            if not ROOT <= parent < i:
                raise ValueError(f"node {i} has parent {parent}: parents must come first")

    @classmethod
    def of(cls, tokens: Sequence[int], parents: Sequence[int] | None = None) -> TokenTree:
        """The tree of these nodes, a chain when ``parents`` is None."""
        if parents is None:
            return cls.chain(tokens)
        return cls(tuple(tokens), tuple(parents))

    @classmethod
    def chain(cls, tokens: Sequence[int]) -> TokenTree:
        """A single candidate per position: node i follows node i - 1."""
        return cls(tuple(tokens), tuple(range(ROOT, len(tokens) - 1)))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return is_chain(self.parents)

    def rooted(self, token: int) -> TokenTree:
        """This tree hung below ``token`` as node 0: what a target forward runs when the
        last committed token is fed with the draft (its row scores the first level)."""
        parents = (ROOT, *(parent + 1 for parent in self.parents))
        return TokenTree((token, *self.tokens), parents)

    def dfs_paths(self) -> list[list[int]]:
        """Root paths in depth-first order, later children first: paths sharing a prefix
        are neighbours, and the path through each node's first child comes last (a backend
        scoring path by path ends holding the likeliest one)."""
        paths: list[list[int]] = []
        stack = [[child] for child in reversed(self.children(ROOT))]
        while stack:
            path = stack.pop(0)
            below = self.children(path[-1])
            if not below:
                paths.append(path)
            stack[:0] = [[*path, child] for child in reversed(below)]
        return paths

    @cached_property
    def depths(self) -> tuple[int, ...]:
        """[n] 1 for a child of the root, one more per level below."""
        depths: list[int] = []
        for parent in self.parents:
            depths.append(1 if parent == ROOT else depths[parent] + 1)
        return tuple(depths)

    def children(self, node: int = ROOT) -> list[int]:
        """The nodes directly below ``node`` (ROOT: the first level), in index order."""
        return [i for i, parent in enumerate(self.parents) if parent == node]

    def path(self, node: int) -> list[int]:
        """Node indices from the first level down to ``node``, both included."""
        path = []
        while node != ROOT:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def path_tokens(self, node: int) -> list[int]:
        return [self.tokens[i] for i in self.path(node)]

    def leaves(self) -> list[int]:
        has_child = set(self.parents)
        return [i for i in range(len(self)) if i not in has_child]

    def root_paths(self) -> list[list[int]]:
        """One path per leaf, from the first level down: every candidate continuation."""
        return [self.path(leaf) for leaf in self.leaves()]

    def ancestor_mask(self) -> torch.Tensor:
        """[n, n] bool: row i is True at i and at each ancestor of i, the nodes a tree
        attention lets node i see (besides the committed text)."""
        mask = torch.zeros(len(self), len(self), dtype=torch.bool)
        for i, parent in enumerate(self.parents):
            if parent != ROOT:
                mask[i] = mask[parent]
            mask[i, i] = True
        return mask


def is_chain(parents: Sequence[int]) -> bool:
    """Whether node i hangs under node i - 1 for every i (a plain draft)."""
    return all(parent == i - 1 for i, parent in enumerate(parents))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class PendingNodes:
    """A backend's bookkeeping between ``forward`` and ``commit``: where the last
    forward's nodes start in the cache, and their tree (None: a chain, whose accepted path
    is a prefix of it, so committing it is a rollback); both backends keep one."""

    start: int = 0  # cached positions before the nodes
    tree: TokenTree | None = None
    held: list[int] = field(default_factory=list)  # nodes in the cache, in order (llama.cpp)

    @classmethod
    def of(cls, start: int, tokens: Sequence[int], parents: Sequence[int] | None) -> PendingNodes:
        if parents is None or is_chain(parents):
            return cls(start)
        return cls(start, TokenTree(tuple(tokens), tuple(parents)))
