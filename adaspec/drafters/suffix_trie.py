"""A suffix trie of bounded depth: how often each substring of up to ``depth`` tokens
occurred in the texts added, so a text's tail can be matched and continued by frequency.

SuffixDecoding's suffix tree, cut at a depth as theirs is: every substring of the texts up
to that length is a path from the root, and a node counts the places it ends. Texts grow a
token at a time (a request's output as it is committed), each through a ``Stream`` holding
the nodes of its last suffixes, so adding a token costs ``depth`` steps; the oldest tokens
can be forgotten (a bounded store), a node that no text holds any more leaving the trie.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


class Node:
    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.children: dict[int, Node] = {}
        self.count = 0  # places in the texts where this substring ends


@dataclass
class Stream:
    """One text being added: its tokens still held, and the nodes of its suffixes of 1 to
    depth - 1 tokens, shortest first (those a next token extends)."""

    tokens: deque[int] = field(default_factory=deque)
    window: list[Node] = field(default_factory=list)


@dataclass(frozen=True)
class Continuations:
    """A tree of likely continuations, best first: each node's token, parent (-1: the
    root), and its share of its parent's continuations (how often it came next there)."""

    tokens: list[int]
    parents: tuple[int, ...]
    shares: list[float]


class SuffixTrie:
    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.root = Node()

    def extend(self, stream: Stream, tokens: Iterable[int]) -> None:
        """Add tokens to the end of a stream's text: every substring they end, counted."""
        for token in tokens:
            extended = []
            for node in (self.root, *stream.window):
                if node is not self.root and node.count == 0:
                    continue  # forgotten while this text was open: it left the trie
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = Node()
                child.count += 1
                extended.append(child)
            stream.window = extended[: self.depth - 1]
            stream.tokens.append(token)

    def forget_first(self, stream: Stream) -> None:
        """Forget a stream's oldest token held: the substrings that start there."""
        tokens = list(stream.tokens)[: self.depth]
        stream.tokens.popleft()
        node = self.root
        for token in tokens:
            child = node.children[token]
            child.count -= 1
            if child.count == 0:
                del node.children[token]
            node = child

    def match(self, text: Sequence[int], longest: int) -> tuple[Node | None, int]:
        """The node of the longest suffix of ``text`` (at most ``longest`` tokens) that
        occurred with something after it, and its length; (None, 0) where not even the
        last token did (the text's own end, if added, has nothing after it yet). A suffix
        was followed only if its own suffixes were, so the length is found by bisection."""
        low, high, found = 0, min(longest, len(text)), None
        while low < high:
            middle = (low + high + 1) // 2
            node = self.walk(text[len(text) - middle :])
            if node is None or not node.children:
                high = middle - 1
            else:
                low, found = middle, node
        return (found, low) if low else (None, 0)

    def walk(self, tokens: Sequence[int]) -> Node | None:
        node: Node | None = self.root
        for token in tokens:
            node = node.children.get(token)
            if node is None:
                return None
        return node

    @staticmethod
    def continuations(node: Node, max_nodes: int, max_depth: int, least: float) -> Continuations:
        """Best first below ``node``: the continuation whose whole path is likeliest (the
        product of its nodes' shares) comes next, none whose path is below ``least``, so
        every prefix of the nodes is a tree of the likeliest continuations."""
        tokens: list[int] = []
        parents: list[int] = []
        shares: list[float] = []
        frontier: list[tuple[float, int, int, int, float, int, Node]] = []
        order = 0  # ties go to the continuation seen first

        def push(parent: int, below: Node, path: float, depth: int) -> None:
            nonlocal order
            total = sum(child.count for child in below.children.values())
            if depth > max_depth or total == 0:
                return
            for token, child in below.children.items():
                share = child.count / total
                if path * share >= least:
                    entry = (-path * share, order, parent, token, share, depth, child)
                    heapq.heappush(frontier, entry)
                    order += 1

        push(-1, node, 1.0, 1)
        while frontier and len(tokens) < max_nodes:
            negative, _, parent, token, share, depth, child = heapq.heappop(frontier)
            tokens.append(token)
            parents.append(parent)
            shares.append(share)
            push(len(tokens) - 1, child, -negative, depth + 1)
        return Continuations(tokens, tuple(parents), shares)
