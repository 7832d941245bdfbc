"""One request from the app's side: submitted to the scheduler, read back as text pieces.

The streamed and the whole answer are both made by iterating ``Completion.pieces()``, so
they cannot differ. Text is decoded incrementally (never cutting a character) and cut at
the first stop string; each step's piece says how much of it came from an accepted draft,
so a client can show speculation at work (the stream's ``adaspec`` extension). The
request's counts go to the metrics and one log line at its end, also when its client left
before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from time import perf_counter

from adaspec.backends.base import Tokenizer
from adaspec.config import GenerationConfig
from adaspec.server.bridge import EventBridge, Stamped
from adaspec.server.errors import translate
from adaspec.server.metrics import Metrics
from adaspec.server.scheduler import Failed, Finished, Scheduler, Step
from adaspec.server.stops import StopText
from adaspec.stats import GenerationStats, StepOutcome
from adaspec.textstream import TextStream

log = logging.getLogger("adaspec.server")


@dataclass(frozen=True)
class Outcome:
    """How a request ended: what ``usage``, ``finish_reason`` and ``adaspec`` report."""

    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int  # every token generated, also past a stop string
    cached_tokens: int
    stats: GenerationStats


@dataclass(frozen=True)
class Piece:
    """Text one step released (``step`` None: the text held back until the end). Its first
    ``from_draft`` characters (code points) were decoded from draft tokens the target
    accepted; text held back across steps (a split character, a possible stop string)
    counts as the step's that released it."""

    text: str
    from_draft: int = 0
    step: StepOutcome | None = None


class Completion:
    """A submitted request. ``metrics`` None: not counted (the warm-up's)."""

    def __init__(
        self,
        scheduler: Scheduler,
        prompt: list[int],
        config: GenerationConfig,
        stops: list[str],
        tokenizer: Tokenizer,
        metrics: Metrics | None = None,
        name: str = "request",
    ) -> None:
        self.started = perf_counter()
        self.name, self.metrics = name, metrics
        self.bridge = EventBridge(asyncio.get_running_loop())
        self.text = TextStream(tokenizer)
        self.stop = StopText(stops)
        self.outcome: Outcome | None = None
        self._ended = False  # Finished or Failed was read
        self._gone = False  # abandoned by its reader
        self._last_step: float | None = None
        self.ticket = scheduler.submit(prompt, config, self.bridge.on_event)

    async def pieces(self) -> AsyncIterator[Piece]:
        """The answer as it comes: a piece per step (its text may be empty) and the rest
        at the end; ``outcome`` is set once it is exhausted. Raises an APIError where the
        request failed."""
        try:
            async for stamp, event in self.bridge.events():
                if isinstance(event, Step):
                    piece = self._step(stamp, event)
                elif isinstance(event, Finished):
                    piece = self._finish(stamp, event)
                else:
                    raise self._failed(event)
                if piece.text or piece.step:
                    yield piece
        finally:
            self.abandon()

    async def whole(self) -> str:
        return "".join([piece.text async for piece in self.pieces()])

    def abandon(self) -> None:
        """The client is gone: cancel the request (its slot is free within one step) and
        still count and log its end when the scheduler reports it."""
        if not self._ended and not self._gone:
            self._gone = True
            self.ticket.cancel()
            self.bridge.abandon(self._abandoned)

    def _step(self, stamp: float, step: Step) -> Piece:
        self._observe_latency(stamp, len(step.token_ids))
        if self.stop.stopped:
            return Piece("")  # a step already under way when the stop string was found
        accepted = min(step.outcome.accepted, len(step.token_ids))
        drafted = self._release(step.token_ids[:accepted])
        own = self._release(step.token_ids[accepted:])
        if self.stop.stopped:
            self.ticket.cancel()
        return Piece(drafted + own, len(drafted), step.outcome)

    def _release(self, ids: list[int]) -> str:
        return self.stop.push(self.text.push(ids)) if ids else ""

    def _finish(self, stamp: float, finished: Finished) -> Piece:
        self._ended = True
        text = self.stop.push(self.text.flush()) + self.stop.flush()
        result = finished.result
        stopped = self.stop.stopped or result.finish_reason == "stop"
        self.outcome = Outcome(
            finish_reason="stop" if stopped else "length",
            prompt_tokens=len(self.ticket.prompt),
            completion_tokens=len(result.token_ids),
            cached_tokens=finished.cached_tokens,
            stats=result.stats,
        )
        self._record(stamp, finished, by_client=finished.cancelled and not self.stop.stopped)
        return Piece(text)

    def _failed(self, failed: Failed) -> Exception:
        self._ended = True
        error = translate(failed.error)
        log.warning("%s failed after %.2f s: %s", self.name, self._since_start(), error)
        return error

    def _abandoned(self, stamped: Stamped) -> None:
        _, event = stamped
        if isinstance(event, Finished):
            self._record(stamped[0], event, by_client=True)

    def _observe_latency(self, stamp: float, tokens: int) -> None:
        if self.metrics is not None and tokens:
            if self._last_step is None:
                self.metrics.ttft.observe(stamp - self.started)
            else:
                self.metrics.token_gap.observe((stamp - self._last_step) / tokens)
        self._last_step = stamp

    def _record(self, stamp: float, finished: Finished, by_client: bool) -> None:
        stats = finished.result.stats
        summary = stats.summary()
        if self.metrics is not None:
            self.metrics.record(stats, finished.cached_tokens, cancelled=by_client)
            self.metrics.duration.observe(stamp - self.started)
        end = "cancelled" if by_client else (self.outcome.finish_reason if self.outcome else "")
        log.info(
            "%s: %d prompt tokens (%d cached), %d generated, accepted %d/%d drafted "
            "(%.2f per target pass), %.2f s, %s",
            self.name,
            stats.prompt_tokens,
            finished.cached_tokens,
            summary["new_tokens"],
            summary["accepted"],
            summary["drafted"],
            summary["mean_accepted"],
            stamp - self.started,
            end,
        )

    def _since_start(self) -> float:
        return perf_counter() - self.started
