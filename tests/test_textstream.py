from __future__ import annotations

from adaspec.textstream import TextStream

PIECES = {0: b"\xe2", 1: b"\x82", 2: b"\xac", 3: b"a", 4: b"\xff"}


class ByteTokenizer:
    def decode(self, ids):
        return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


def test_split_character_waits_for_its_last_byte():
    stream = TextStream(ByteTokenizer())
    assert stream.push([3, 0]) == ""  # "a" + first byte of the euro sign: held back
    assert stream.push([1]) == ""
    assert stream.push([2, 3]) == "a€a"


def test_flush_gives_what_was_held_back():
    stream = TextStream(ByteTokenizer())
    assert stream.push([3, 4]) == ""
    assert stream.flush() == "a\ufffd"
