"""Real-model checks on the pulled default pair. Marked `integration`: run them with
`pytest -m integration` after `adaspec models pull` (``make test`` does both)."""

from __future__ import annotations

import pytest

from adaspec import GenerationConfig, load
from adaspec.api import encode_prompt
from adaspec.models import NAMED_MODELS, model_path

pytestmark = pytest.mark.integration
DRAFT = "qwen2.5-coder-0.5b"
PROMPTS = [
    "Write a Python function that reverses a linked list.",
    "Summarize: speculative decoding drafts tokens cheaply and verifies them in one pass.",
]


@pytest.fixture(scope="module")
def engines():
    if not model_path(NAMED_MODELS[DRAFT]).is_file():
        pytest.skip("the default pair is not pulled; run `adaspec models pull`")
    plain = load(DRAFT, drafter="none")
    ngram = load(DRAFT, drafter="ngram", policy="heuristic")
    return plain, ngram


@pytest.mark.parametrize("prompt", PROMPTS)
def test_real_ngram_greedy_equals_autoregressive(engines, prompt):
    plain, ngram = engines
    ids = encode_prompt(plain.target.tokenizer, prompt, chat=True)
    config = GenerationConfig(max_new_tokens=32)
    want = plain.generate(ids, config)
    got = ngram.generate(ids, config)
    assert got.token_ids == want.token_ids
    assert len(want.token_ids) == 32 or want.finish_reason == "stop"
    assert want.text.strip()
