"""The one thread that runs every model call of a server, from its load to its last step.

llama.cpp and torch run their kernels on OpenMP, which keeps a pool of worker threads for
each thread that calls it, and counts them all: once the pools outnumber the cores, its
workers stop spinning at each kernel's barrier and sleep instead. A server whose warm-up
ran on one thread and its requests on another decoded every token slower (measured in
docs/serving.md, "One thread for the models"). So the load, the warm-up's forwards and the
scheduler's loop are jobs of this thread, in that order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
Job = tuple[Future, Callable[..., Any], tuple]


class ModelThread:
    """Runs submitted calls one after another on one daemon thread until closed (a server
    that stops while a call runs does not wait for it to exit)."""

    def __init__(self, name: str = "adaspec-models") -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        return future

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn`` there and wait: its result, or its exception raised here."""
        return self.submit(fn, *args).result()

    def close(self, timeout: float = 1.0) -> None:
        """End the thread once the calls submitted before have run, waiting at most
        ``timeout`` seconds for it."""
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)
