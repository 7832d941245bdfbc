"""llama.cpp backend errors that need no real model (the real-model checks are integration)."""

from __future__ import annotations

import pytest

from adaspec.api import choose_backend
from adaspec.backends import BACKENDS
from adaspec.errors import ModelError

pytestmark = pytest.mark.skipif("llama.cpp" not in BACKENDS.names(), reason="no llama-cpp-python")


def test_truncated_gguf_is_a_clear_error(tmp_path):
    path = tmp_path / "truncated.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 32)
    with pytest.raises(ModelError, match="could not load"):
        BACKENDS.get("llama.cpp").load(path)


def test_not_gguf_is_a_clear_error(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF file"):
        BACKENDS.get("llama.cpp").load(path)


def test_auto_routes_gguf_to_llama_cpp(tmp_path):
    assert choose_backend(tmp_path / "m.gguf", "auto") == "llama.cpp"
    assert choose_backend(tmp_path, "auto") == "torch"
    assert choose_backend(tmp_path / "m.gguf", "torch") == "torch"
