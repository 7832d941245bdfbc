"""From the scheduler's thread to the event loop: a ticket's events as an async iterator.

The scheduler calls ``on_event`` from its own thread, and must never be disturbed by the
app: an event for a loop that has already closed (a server stopping) is dropped. A reader
that leaves early (a client gone) hands the end of the request to a callback, so the
request is still counted when the scheduler finishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from time import perf_counter

from adaspec.server.scheduler import Event, Failed, Finished

Stamped = tuple[float, Event]  # (perf_counter() when the scheduler handed it over, event)


def is_end(event: Event) -> bool:
    return isinstance(event, Finished | Failed)


class EventBridge:
    """Collects one ticket's events, each stamped with the time the scheduler sent it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Stamped] = asyncio.Queue()
        self._on_end: Callable[[Stamped], None] | None = None

    def on_event(self, event: Event) -> None:
        """Called from the scheduler's thread; never raises into it."""
        # A closed loop (a server stopped) has nobody waiting for this request any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._arrive, (perf_counter(), event))

    def _arrive(self, stamped: Stamped) -> None:
        if self._on_end is None:
            self.queue.put_nowait(stamped)
        elif is_end(stamped[1]):
            self._on_end(stamped)

    async def events(self) -> AsyncIterator[Stamped]:
        """Events until the ticket's Finished or Failed, included."""
        while True:
            stamped = await self.queue.get()
            yield stamped
            if is_end(stamped[1]):
                return

    def abandon(self, on_end: Callable[[Stamped], None]) -> None:
        """Nobody reads the events any more: call ``on_end`` with the last one instead."""
        self._on_end = on_end
        while not self.queue.empty():
            stamped = self.queue.get_nowait()
            if is_end(stamped[1]):
                on_end(stamped)
