"""Stop strings, applied to the text as it streams.

A stop string may arrive split over several tokens, so text that could be the start of one
is held back until the next piece shows whether it is; nothing ever handed out contains a
stop string or the start of one that later completes.
"""

from __future__ import annotations

from collections.abc import Sequence


def held_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string
    (0 when none is): the part that must wait for more text."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in ``text``, or None."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


class StopText:
    """Text pieces in, the text to hand out: up to (not including) the first stop string.

    Invariant: the held text is the longest suffix of everything pushed that is a proper
    prefix of a stop string, so a stop string can only start inside it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        """The text now safe to hand out; sets ``stopped`` when a stop string completed."""
        if self.stopped:
            return ""
        text = self.held + piece
        at = first_stop(text, self.stops)
        if at is not None:
            self.stopped, self.held = True, ""
            return text[:at]
        keep = held_suffix(text, self.stops)
        out, self.held = text[: len(text) - keep], text[len(text) - keep :]
        return out

    def flush(self) -> str:
        """At the end of the text: what was held back was no stop string after all."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out
