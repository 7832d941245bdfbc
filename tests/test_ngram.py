from __future__ import annotations

import pytest

from adaspec.drafters.ngram import prompt_lookup


@pytest.mark.parametrize(
    ("tokens", "k", "expected"),
    [
        ([1, 2, 3, 4, 1, 2, 3], 2, [4, 1]),  # trigram match continues with what followed
        ([1, 2, 3, 9, 8, 2, 3], 3, [9, 8, 2]),  # bigram (2, 3) when the trigram is new
        ([5, 6, 7, 5], 2, [6, 7]),  # unigram fallback
        ([1, 2, 3, 4], 3, []),  # nothing repeats
        ([7], 3, []),  # too short to match anything
        ([1, 2, 3, 1, 2, 3], 5, [1, 2, 3, 1, 2]),  # copy runs into its own output (period 3)
        ([4, 4], 3, [4, 4, 4]),
        ([1, 2, 0, 1, 2, 5, 1, 2], 1, [5]),  # the most recent occurrence wins
        ([1, 2, 3, 1, 2, 3], 0, []),
    ],
)
def test_prompt_lookup_table(tokens, k, expected):
    assert prompt_lookup(tokens, k) == expected


def test_min_ngram_limits_fallback():
    assert prompt_lookup([5, 6, 7, 5], 2, max_ngram=3, min_ngram=2) == []
