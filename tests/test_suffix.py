"""Suffix decoding: the bounded suffix trie, and the drafter over a request's own text and
the outputs of earlier requests."""

from __future__ import annotations

import pytest
import torch

from adaspec.bench.methods import AdaspecMethod
from adaspec.budget import Budget
from adaspec.config import SamplingParams
from adaspec.drafters.suffix import SPEC_FACTOR, OutputStore, SuffixDrafter
from adaspec.drafters.suffix_trie import Stream, SuffixTrie
from adaspec.errors import ConfigError
from adaspec.state import DecodeState
from adaspec.tree import ROOT
from tests.tiny import backend, tiny_model


def trie_of(text: list[int], depth: int = 4) -> SuffixTrie:
    trie = SuffixTrie(depth)
    trie.extend(Stream(), text)
    return trie


def counts(trie: SuffixTrie, text: list[int]) -> int:
    node = trie.walk(text)
    return 0 if node is None else node.count


def test_every_substring_up_to_the_depth_is_counted_where_it_ends():
    trie = trie_of([1, 2, 3, 1, 2, 4, 1, 2], depth=3)
    assert counts(trie, [1, 2]) == 3 and counts(trie, [2, 3]) == 1 and counts(trie, [2, 4]) == 1
    assert counts(trie, [1, 2, 3]) == 1 and counts(trie, [3, 1, 2]) == 1
    assert trie.walk([1, 2, 3, 1]) is None  # deeper than the trie


def test_the_longest_suffix_seen_is_matched():
    trie = trie_of([1, 2, 3, 1, 2, 4], depth=4)
    node, length = trie.match([9, 3, 1, 2], longest=3)
    assert length == 3 and node is trie.walk([3, 1, 2])
    assert trie.match([9, 8], longest=3) == (None, 0)
    assert trie.match([7, 3], longest=3)[1] == 1
    assert trie.match([7, 4], longest=3) == (None, 0)  # 4 occurred, but nothing after it


def test_continuations_come_best_first_by_how_often_they_followed():
    trie = trie_of([5, 1, 5, 1, 5, 2, 5, 1, 7], depth=3)  # after 5: 1 three times, 2 once
    found = SuffixTrie.continuations(trie.walk([5]), max_nodes=4, max_depth=2, least=0.0)
    # paths: 1 (3/4), 1 5 (3/4 * 2/3), then 2 and 1 7 (1/4 each: the first seen first)
    assert found.tokens == [1, 5, 2, 7] and found.parents == (ROOT, 0, ROOT, 0)
    assert found.shares == [0.75, 2 / 3, 0.25, 1 / 3]
    rare = SuffixTrie.continuations(trie.walk([5]), max_nodes=4, max_depth=1, least=0.5)
    assert rare.tokens == [1]  # 2 followed too rarely


def test_forgetting_the_oldest_tokens_removes_their_substrings():
    store = OutputStore(limit=4)
    first, second = store.open(), store.open()
    store.add(first, [1, 2, 3])
    store.add(second, [7, 8, 9])  # over the limit: 1 and 2 are forgotten
    assert store.held == 4 and list(first.tokens) == [3]
    assert store.trie.walk([1]) is None and store.trie.walk([2, 3]) is None
    assert counts(store.trie, [3]) == 1 and counts(store.trie, [7, 8, 9]) == 1


def state(tokens: list[int], prompt: int) -> DecodeState:
    return DecodeState(tokens, prompt, SamplingParams(), torch.Generator())


def test_an_earlier_requests_output_is_drafted_in_a_new_request():
    shared = SuffixDrafter()
    first = shared.open(state([1, 2], 2))
    first.propose(state([1, 2, 40, 41, 42, 43, 44], 2), Budget(8))  # its output: indexed
    second = shared.open(state([9, 9, 40, 41], 4))  # a new prompt ending as that output began
    draft = second.propose(state([9, 9, 40, 41], 4), Budget(8))
    assert draft.tokens[:3] == [42, 43, 44] and draft.source == "suffix"


def test_the_draft_grows_with_the_match_and_is_empty_without_one():
    text = list(range(10, 30))
    drafter = SuffixDrafter().open(state(text, len(text)))
    assert drafter.propose(state([*text, 99], len(text)), Budget(16)).tokens == []
    short = drafter.propose(state([*text, 99, 15], len(text)), Budget(16))
    assert len(short.tokens) == SPEC_FACTOR * 1  # one token matched
    long = drafter.propose(state([*text, 99, 15, 16, 17, 18], len(text)), Budget(16))
    assert len(long.tokens) == SPEC_FACTOR * 4 and long.tokens[:3] == [19, 20, 21]


def test_a_store_of_no_tokens_drafts_from_the_request_alone():
    """--suffix-cache-tokens 0: no request learns from another (one user's text is never
    drafted into another's), while a request still drafts from its own."""
    shared = SuffixDrafter(store_tokens=0)
    first = shared.open(state([1, 2], 2))
    first.propose(state([1, 2, 40, 41, 42, 43, 44], 2), Budget(8))
    second = shared.open(state([9, 9, 40, 41], 4))
    assert second.propose(state([9, 9, 40, 41], 4), Budget(8)).tokens == []
    assert shared.store.held == 0 and not shared.store.streams
    own = second.propose(state([9, 9, 40, 41, 7, 9, 9], 4), Budget(8))
    assert own.tokens[:2] == [40, 41]  # its own prompt: 9 9 was followed by 40 41


def test_the_cache_size_reaches_the_suffix_drafter_alone_and_inside_auto():
    target = backend(tiny_model(seed=0))
    alone = AdaspecMethod("suffix:fixed", target, None, suffix_cache_tokens=5).engine.drafter
    auto = AdaspecMethod("auto", target, None, suffix_cache_tokens=7).engine.drafter
    assert alone.store.limit == 5 and auto.arms["suffix"].store.limit == 7
    with pytest.raises(ConfigError, match="--suffix-cache-tokens must be 0 or more"):
        AdaspecMethod("suffix", target, None, suffix_cache_tokens=-1)
