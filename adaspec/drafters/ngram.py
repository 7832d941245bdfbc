"""Prompt lookup (n-gram) drafting: copy what followed the last time the text's tail was seen.

Model-free and nearly free to run, it pays off wherever output repeats its input: code
edits, summaries, retrieval answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.drafters.base import DRAFTERS, OpenByCopy
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome
from adaspec.tree import ROOT, TokenTree


def prompt_lookup(
    tokens: Sequence[int], k: int, max_ngram: int = 3, min_ngram: int = 1
) -> list[int]:
    """Up to k tokens continuing ``tokens``, by the longest suffix n-gram (max_ngram down to
    min_ngram) that occurred earlier; the most recent earlier occurrence wins."""
    found = earlier_continuations(tokens, k, max_ngram, min_ngram, most=1) if k > 0 else []
    return found[0][0] if found else []


def earlier_continuations(
    tokens: Sequence[int], k: int, max_ngram: int, min_ngram: int, most: int
) -> list[tuple[list[int], int]]:
    """Up to ``most`` different k-token continuations of the text's tail from its earlier
    occurrences, with the length of the n-gram each matched: longest n-gram first, most
    recent first within one.

    Invariant: a match at start s has s + n <= len(tokens) - 1, so at least one real
    continuation token exists. A continuation is copied LZ77-style (it may run into the
    text it is producing), so a repeating pattern yields a full k tokens."""
    seq = np.asarray(tokens, dtype=np.int64)
    # Where the last token occurred before (one pass over the text); a longer n-gram can
    # only end at one of these, so only they are checked further back.
    ends = np.flatnonzero(seq[:-1] == seq[-1])  # [m]
    found: list[tuple[list[int], int]] = []
    for n in range(max_ngram, min_ngram - 1, -1):
        if len(seq) <= n:
            continue
        match = ends[ends >= n - 1]
        for back in range(1, n):
            match = match[seq[match - back] == seq[-1 - back]]
        for hit in (match - (n - 1))[::-1]:  # starts, most recent first
            continuation = _copy(tokens, int(hit) + n, k)
            if all(continuation != seen for seen, _ in found):
                found.append((continuation, n))
            if len(found) == most:
                return found
    return found


def continuation_tree(
    continuations: Sequence[Sequence[int]], max_nodes: int
) -> tuple[list[int], tuple[int, ...], list[int]]:
    """The continuations merged into a trie, the first whole and first in node order, each
    later one only from where it leaves those before it: (tokens, parents, which
    continuation each node came from), at most ``max_nodes`` nodes."""
    tokens: list[int] = []
    parents: list[int] = []
    origin: list[int] = []
    child: dict[tuple[int, int], int] = {}  # (parent, token) -> node
    for index, continuation in enumerate(continuations):
        parent = ROOT
        for token in continuation:
            node = child.get((parent, token))
            if node is None:
                if len(tokens) == max_nodes:
                    break
                node = len(tokens)
                tokens.append(token)
                parents.append(parent)
                origin.append(index)
                child[(parent, token)] = node
            parent = node
    return tokens, tuple(parents), origin


def _copy(seq: Sequence[int], source: int, k: int) -> list[int]:
    """k tokens of ``seq`` from ``source`` on, running into the copy itself past its end."""
    out: list[int] = []
    for i in range(source, source + k):
        out.append(seq[i] if i < len(seq) else out[i - len(seq)])
    return out


def match_confidence(n: int) -> float:
    """The chance that a token copied after an n-gram match is right, before the text says
    more: 1 - 5 / (3 (n + 1)), rising toward 1 with n. Fitted to how often the first copied
    token was the target's greedy choice (docs/methods.md). Policies calibrate it online; a
    prior that starts too confident pays for its misses in every request before the
    evidence corrects it."""
    return 1.0 - 5.0 / (3.0 * (n + 1)) if n else 0.0


def copy_confidences(n: int, k: int) -> list[float]:
    """Confidences of the k copied tokens after an n-gram match. Token i is tested only if
    the i before it were accepted, and then the text ends in an (n + i)-gram that occurred
    before: its confidence is that of the longer match (measured: docs/methods.md)."""
    return [match_confidence(n + i) for i in range(k)] if n else []


@DRAFTERS.register("ngram")
class NgramDrafter(OpenByCopy):
    needs_draft_model: ClassVar[bool] = False
    uses_draft_model: ClassVar[bool] = False
    row_top_k: ClassVar[int] = 0

    def __init__(self, max_ngram: int = 6, min_ngram: int = 1, branches: int = 3) -> None:
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.branches = branches  # most earlier occurrences whose continuations are drafted

    @classmethod
    def create(
        cls, target: Backend, draft: Backend | None, options: DrafterOptions = DEFAULT_OPTIONS
    ) -> NgramDrafter:
        return cls()

    def start(self, state: DecodeState) -> None:
        pass

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        """The most recent match's continuation; where the budget leaves room for more
        nodes than one path, the continuations of other earlier matches (of the same or a
        shorter n-gram) branch off it where they differ."""
        k = budget.depth_limit
        if k <= 0:
            return Draft(source="ngram")
        most = self.branches if budget.max_tokens > k else 1
        found = earlier_continuations(state.tokens, k, self.max_ngram, self.min_ngram, most)
        if len(found) <= 1:
            tokens, n = found[0] if found else ([], 0)
            return Draft(tokens, None, copy_confidences(n, len(tokens)), "ngram")
        nodes, parents, origin = continuation_tree([c for c, _ in found], budget.max_tokens)
        depths = TokenTree(tuple(nodes), parents).depths
        # a node: its match's confidence at its depth, shared with the branches before it
        conf = [
            match_confidence(found[o][1] + d - 1) / (1 + o)
            for d, o in zip(depths, origin, strict=True)
        ]
        return Draft(nodes, None, conf, "ngram", parents)

    def observe(self, outcome: StepOutcome) -> None:
        pass
