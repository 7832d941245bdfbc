"""Suffix decoding (SuffixDecoding, Oliaro et al. 2024; after REST and RASD): draft what
followed the text's longest matching suffix, in this request and in earlier requests'
outputs.

Agents and tools repeat themselves across requests: the same calls, the same schema, edits
of one file. A suffix trie over this request's prompt and output, and one over the outputs
of the requests this drafter served (a store shared by the server's slots, bounded in
tokens, the oldest forgotten first), count what followed each substring. Each step the
longest suffix of the text found in either (the request's own on a tie) is continued best
first by those counts, as a tree of at most SPEC_FACTOR nodes per matched token: long
matches, long drafts, none without a match (SuffixDecoding's adaptive length).

Lossless as any lookup: a draft is a function of committed text (a point-mass q), and the
store holds only what the target generated.
"""

from __future__ import annotations

import math
from collections import deque
from typing import ClassVar

from adaspec.backends.base import Backend
from adaspec.budget import Budget
from adaspec.draft import Draft
from adaspec.drafters.base import DRAFTERS, OpenByCopy
from adaspec.drafters.ngram import match_confidence
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.drafters.suffix_trie import Node, Stream, SuffixTrie
from adaspec.state import DecodeState
from adaspec.stats import StepOutcome

MATCH = 12  # the longest suffix of the text matched
DEPTH = MATCH + 8  # the tries' depth: the longest match still has 8 tokens to continue
SPEC_FACTOR = 2.0  # draft nodes per matched token (SuffixDecoding's alpha)
LEAST_PATH = 0.1  # no node on a path that followed the match less often than this


class OutputStore:
    """The outputs of the requests served, in one trie, at most ``limit`` tokens held:
    each request's output is a stream, and the oldest tokens go first."""

    def __init__(self, limit: int = DEFAULT_OPTIONS.suffix_cache_tokens) -> None:
        self.trie = SuffixTrie(DEPTH)
        self.limit = limit
        self.streams: deque[Stream] = deque()
        self.held = 0

    def open(self) -> Stream:
        stream = Stream()
        if self.limit:
            self.streams.append(stream)
        return stream

    def add(self, stream: Stream, tokens: list[int]) -> None:
        if not self.limit:
            return  # a store of 0 tokens keeps nothing
        self.trie.extend(stream, tokens)
        self.held += len(tokens)
        while self.held > self.limit:
            oldest = self.streams[0]
            if oldest.tokens:
                self.trie.forget_first(oldest)
                self.held -= 1
            else:
                self.streams.popleft()


@DRAFTERS.register("suffix")
class SuffixDrafter(OpenByCopy):
    needs_draft_model: ClassVar[bool] = False
    uses_draft_model: ClassVar[bool] = False
    row_top_k: ClassVar[int] = 0

    def __init__(self, store_tokens: int = DEFAULT_OPTIONS.suffix_cache_tokens) -> None:
        self.store = OutputStore(store_tokens)  # shared by every request's copy
        self._open(0)

    @classmethod
    def create(
        cls, target: Backend, draft: Backend | None, options: DrafterOptions = DEFAULT_OPTIONS
    ) -> SuffixDrafter:
        return cls(options.suffix_cache_tokens)

    def _open(self, indexed: int) -> None:
        """This request's own fields (rebound, never cleared: OpenByCopy)."""
        self.own = SuffixTrie(DEPTH)
        self.own_stream = Stream()
        self.output = self.store.open()  # this request's output, in the shared store
        self.indexed = indexed  # tokens of the request's text in the tries

    def start(self, state: DecodeState) -> None:
        self._open(len(state.tokens))
        self.own.extend(self.own_stream, state.tokens)

    def propose(self, state: DecodeState, budget: Budget) -> Draft:
        self._catch_up(state.tokens)
        node, matched = self._longest_match(state.tokens)
        nodes = min(budget.max_tokens, math.ceil(SPEC_FACTOR * matched))
        depth = min(budget.depth_limit, DEPTH - matched)
        if node is None or nodes <= 0 or depth <= 0:
            return Draft(source="suffix")
        found = SuffixTrie.continuations(node, nodes, depth, LEAST_PATH)
        prior = match_confidence(matched)
        confidences = [share * prior for share in found.shares]
        return Draft(found.tokens, None, confidences, "suffix", found.parents)

    def observe(self, outcome: StepOutcome) -> None:
        pass  # the committed text is read from the state at the next proposal

    def _catch_up(self, tokens: list[int]) -> None:
        """Index the tokens committed since the last proposal, in both tries."""
        new = tokens[self.indexed :]
        if not new:
            return
        self.own.extend(self.own_stream, new)
        self.store.add(self.output, new)
        self.indexed = len(tokens)

    def _longest_match(self, tokens: list[int]) -> tuple[Node | None, int]:
        own = self.own.match(tokens, MATCH)
        shared = self.store.trie.match(tokens, MATCH)
        return own if own[1] >= shared[1] else shared
