"""The scheduler: requests in, token ids out, one thread owning the models.

The HTTP app submits a request and gets a ``Ticket``; the scheduler's thread admits queued
requests into free slots and runs one engine step for every active request per
iteration, handing each step's new token ids to the ticket's callback. torch's thread
count is process-wide and llama.cpp's context is not thread-safe, so only this thread
touches a backend: the server's ModelThread, which loaded the models and warmed them up.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field

from adaspec.config import GenerationConfig
from adaspec.engine import Engine, Generation, GenerationResult
from adaspec.errors import AdaspecError, ConfigError
from adaspec.server.model_thread import ModelThread
from adaspec.stats import StepOutcome
from adaspec.tree import common_prefix


class QueueFull(AdaspecError):
    """Every slot is busy and the queue holds ``max_queue`` requests: retry later."""


class ShuttingDown(AdaspecError):
    """The server is draining its requests before it exits and takes no new ones."""


@dataclass(frozen=True)
class Step:
    """One engine step of one request: the token ids it added."""

    token_ids: list[int]
    outcome: StepOutcome


@dataclass(frozen=True)
class Finished:
    """The request ended (EOS, its limit or a cancel); ``cached_tokens``: prompt tokens
    whose keys and values a slot already held, so their prefill was skipped."""

    result: GenerationResult
    cached_tokens: int = 0
    cancelled: bool = False


@dataclass(frozen=True)
class Failed:
    """The request could not run; the message is the user's to act on where ``error`` is
    an AdaspecError, else a bug in adaspec (the app answers 500)."""

    error: Exception


Event = Step | Finished | Failed


@dataclass
class Ticket:
    """A submitted request. ``on_event`` is called from the scheduler's thread, in order:
    Step* then exactly one Finished or Failed. ``cancel()`` is safe from any thread; the
    request's slot is free again within one step."""

    id: str
    prompt: list[int]
    config: GenerationConfig
    on_event: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Scheduler:
    """Runs submitted requests on one engine, up to ``parallel`` in flight (one per slot
    of the target), the rest queued (at most ``max_queue``). Each iteration admits queued
    requests into free slots, then runs one step of every active request with their
    drafts scored in one target pass (``Engine.step_all``).

    ``prefix_reuse``: a request goes to the free slot whose cache shares the longest
    prefix with its prompt, and skips prefilling that prefix (a multi-turn chat resending
    its history), as llama.cpp's ``cache_prompt`` and vLLM's prefix caching do, but only
    where the keys and values reused are bit for bit those a cold prefill computes (an
    earlier prompt on llama.cpp, docs/serving.md): a request's greedy ids never depend on
    what ran before or beside it."""

    def __init__(
        self,
        engine: Engine,
        parallel: int = 1,
        max_queue: int = 64,
        prefix_reuse: bool = True,
        thread: ModelThread | None = None,
    ) -> None:
        slots = getattr(engine.target, "slots", 1)
        if not 1 <= parallel <= slots:
            raise ConfigError(
                f"--parallel {parallel} needs as many slots; the target was loaded with {slots}"
            )
        self.engine = engine
        self.parallel = parallel
        self.max_queue = max_queue
        self.prefix_reuse = prefix_reuse
        self._queue: deque[Ticket] = deque()
        self._active: dict[int, tuple[Ticket, Generation]] = {}  # slot -> request
        self._held: dict[int, list[int]] = {}  # slot -> the prompt it holds, reusable exactly
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread = thread  # the models' own thread; a new one where none is given
        self._owns_thread = thread is None
        self._loop: Future[None] | None = None

    @property
    def busy_slots(self) -> int:
        return len(self._active)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._thread = self._thread or ModelThread("adaspec-scheduler")
        self._loop = self._thread.submit(self._run)
        self._loop.add_done_callback(_log_failure)

    def submit(
        self, prompt: list[int], config: GenerationConfig, on_event: Callable[[Event], None]
    ) -> Ticket:
        """Queue a request; raises QueueFull or ShuttingDown, or the engine's ConfigError
        for a request that cannot fit (checked here, before it is queued)."""
        self.engine.check_request(prompt, config)
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down; retry on another replica")
            free = self.parallel - len(self._active)  # queued there at the next iteration
            if len(self._queue) >= self.max_queue + free:
                raise QueueFull(f"all {self.parallel} slots are busy and the queue is full")
            ticket = Ticket(f"req-{next(self._ids)}", list(prompt), config, on_event)
            self._queue.append(ticket)
            self._lock.notify()
        return ticket

    def shutdown(self, timeout: float | None = None) -> None:
        """Take no new requests, finish those queued and in flight, stop the thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._loop is not None:
            wait_for([self._loop], timeout)
        if self._owns_thread and self._thread is not None:
            self._thread.close()

    def _run(self) -> None:
        while self._wait_for_work():
            self._admit()
            self._step()

    def _wait_for_work(self) -> bool:
        """Block until a request is queued or in flight; False once stopping and idle."""
        with self._lock:
            while not self._queue and not self._active and not self._stopping:
                self._lock.wait()
            return bool(self._queue or self._active)

    def _admit(self) -> None:
        """Queued requests into free slots, each prefilled there (alone: a prompt's
        prefill is long, and the others wait for it as they would for a step). A request
        leaves the queue and takes its slot under one lock, so ``submit`` never sees it in
        neither."""
        while len(self._active) < self.parallel:
            with self._lock:
                if not self._queue:
                    return
                ticket = self._queue.popleft()
                slot, cached = self._place(ticket.prompt)
                generation = Generation(self.engine, ticket.prompt, ticket.config, slot)
                self._active[slot] = (ticket, generation)
            if ticket.cancelled.is_set():  # gone before it started
                self._end(slot, cancelled=True)
                continue
            try:
                self.engine.begin(generation, cached)
            except Exception as error:  # reported to its own request; the others go on
                self._end(slot, error=error)

    def _place(self, prompt: list[int]) -> tuple[int, int]:
        """The free slot to run a prompt in, and how many of its tokens that slot's cache
        holds already, reusable exactly (0 without prefix reuse)."""
        free = [slot for slot in range(self.parallel) if slot not in self._active]
        least = self._exact_reuse_from()
        if least is None:
            return free[0], 0
        room = len(prompt) - least  # the rest must be prefilled in pieces as large
        shared = {s: min(common_prefix(self._held.get(s, []), prompt), room) for s in free}
        slot = max(free, key=lambda s: (shared[s], -s))
        return slot, max(shared[slot], 0)

    def _exact_reuse_from(self) -> int | None:
        """How many prompt tokens must be left to prefill for a reused prefix to give what
        a cold prefill gives bit for bit (the backend's ``prefill_invariant_from``); None:
        no reuse."""
        if not self.prefix_reuse:
            return None
        return getattr(self.engine.target, "prefill_invariant_from", None)

    def _step(self) -> None:
        """One step of every active request, their drafts in one target pass; a request
        cancelled since its last step ends before it."""
        for slot, (ticket, _) in list(self._active.items()):
            if ticket.cancelled.is_set():
                self._end(slot, cancelled=True)
        running = [(slot, *pair) for slot, pair in self._active.items()]
        if not running:
            return
        try:
            news = self.engine.step_all([generation for _, _, generation in running])
        except Exception as error:  # a pass shared by all: none of their caches is sure
            for slot, _, _ in running:
                self._end(slot, error=error)
            return
        for (slot, ticket, generation), new in zip(running, news, strict=True):
            ticket.on_event(Step(new, generation.stats.steps[-1]))
            if generation.done:
                self._end(slot)

    def _reusable(self, generation: Generation) -> list[int]:
        """What of a finished request a later prompt may reuse from its slot: its prompt,
        prefilled in pieces that round alike however split; not its generated tokens,
        decoded a few at a time by other kernels."""
        least = self._exact_reuse_from()
        if least is None or generation.state is None or len(generation.prompt) < least:
            return []
        return list(generation.prompt)

    def _end(self, slot: int, cancelled: bool = False, error: Exception | None = None) -> None:
        """Free the slot; the request gets its last event. The slot's cache keeps the
        request's text for a later prompt that shares it."""
        ticket, generation = self._active.pop(slot)
        self.engine.end(generation)
        self._held[slot] = self._reusable(generation) if error is None else []
        if error is not None:
            ticket.on_event(Failed(error))
        else:
            ticket.on_event(Finished(generation.finished(), generation.cached_tokens, cancelled))


def _log_failure(loop: Future[None]) -> None:
    """A loop that raised is a bug in adaspec: say so, as a thread's end would."""
    error = loop.exception()
    if error is not None:
        logging.getLogger("adaspec.server").error(
            "the scheduler stopped", exc_info=(type(error), error, error.__traceback__)
        )
