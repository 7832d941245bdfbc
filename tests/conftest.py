"""Session fixtures: tokenizers and model folders built from the tiny models in tiny.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.tiny import make_tokenizer, save_model_dir


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer(vocab_size=300)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("tiny-target"), tokenizer)


@pytest.fixture(scope="session")
def draft_dir(tmp_path_factory, tokenizer) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("tiny-draft"), tokenizer, seed=3)


@pytest.fixture(scope="session")
def foreign_dir(tmp_path_factory) -> Path:
    """A model whose tokenizer differs from the target's: an invalid draft."""
    other = make_tokenizer(vocab_size=280, corpus=["completely different words here"] * 50)
    return save_model_dir(tmp_path_factory.mktemp("tiny-foreign"), other, seed=5)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models are all overhead; one thread avoids contention with other work."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """A cache of its own for an engine a module-scoped fixture loads (own_cache, per test,
    comes too late for it), never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADASPEC_CACHE", str(tmp_path_factory.mktemp("module-cache")))
        yield


@pytest.fixture(autouse=True)
def own_cache(request, tmp_path_factory, monkeypatch):
    """Unit tests write what a load times or converts (weight layouts, cost profiles) into a
    cache of their own, never the user's; real-model tests need the pulled pair there."""
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv("ADASPEC_CACHE", str(tmp_path_factory.mktemp("cache")))
