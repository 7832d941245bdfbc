"""Incremental detokenization for streaming.

Decoding token by token splits multi-byte characters and breaks merges, so the whole
generated text is decoded each time and only the new, complete part is handed out.
"""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.backends.base import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0  # characters handed out so far

    def push(self, ids: Sequence[int]) -> str:
        """The text that ``ids`` completes (may be empty while a character is split)."""
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""  # an unfinished UTF-8 sequence: wait for the next token
        delta, self.sent = text[self.sent :], len(text)
        return delta

    def flush(self) -> str:
        """Whatever is still held back when generation ends (a truly invalid byte sequence)."""
        text = self.tokenizer.decode(self.ids)
        delta, self.sent = text[self.sent :], len(text)
        return delta
