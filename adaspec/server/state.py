"""What the app's routes share: the engine, the scheduler once it runs, the metrics, and
whether the server is ready (loading and warming up answer 503)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from adaspec.backends.base import Tokenizer
from adaspec.engine import Engine
from adaspec.errors import ConfigError
from adaspec.server.errors import APIError
from adaspec.server.metrics import Metrics
from adaspec.server.model_thread import ModelThread
from adaspec.server.scheduler import Scheduler
from adaspec.server.settings import ServerSettings


@dataclass
class ServerState:
    settings: ServerSettings
    engine: Engine
    thread: ModelThread  # every model call runs there (the one that loaded the engine)
    status: str = "loading"  # "loading" -> "ok", or "error" where the warm-up failed
    problem: str = ""  # why, when "error"
    created: int = field(default_factory=lambda: int(time.time()))
    settled: threading.Event = field(default_factory=threading.Event)  # ok or error
    scheduler: Scheduler = field(init=False)  # started by the app's lifespan
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        """Refuses an engine the server cannot run (no tokenizer, fewer slots than
        ``parallel``) before any socket opens."""
        if self.engine.target.tokenizer is None:
            raise ConfigError("the server takes text: load a model that has a tokenizer")
        settings = self.settings
        self.scheduler = Scheduler(
            self.engine, settings.parallel, settings.max_queue, settings.prefix_reuse, self.thread
        )
        self.metrics = Metrics(
            busy=lambda: self.scheduler.busy_slots,
            queued=lambda: self.scheduler.queue_depth,
            slots=lambda: self.scheduler.parallel,
        )

    @property
    def tokenizer(self) -> Tokenizer:
        assert self.engine.target.tokenizer is not None  # checked at construction
        return self.engine.target.tokenizer

    def ready(self) -> Scheduler:
        """The scheduler, once the warm-up is done; else a 503 to retry."""
        if self.status != "ok":
            message = "the model is still loading; retry when GET /health answers 200"
            if self.status == "error":
                message = f"the server could not start its model: {self.problem}"
            headers = {"Retry-After": "1"}
            raise APIError(503, message, "unavailable_error", code=self.status, headers=headers)
        return self.scheduler

    def settle(self, problem: str = "") -> None:
        self.status, self.problem = ("error", problem) if problem else ("ok", "")
        self.settled.set()

    def serves(self, model: str | None) -> bool:
        """Whether a request's ``model`` names the model served: the id /v1/models lists,
        the path it was loaded from, or that path's last part; None names it too."""
        label = self.engine.target.label
        return model is None or model in (self.settings.model_id, label, Path(label).name)

    def context_length(self) -> int:
        """Tokens of context a request may fill: its prompt and its answer."""
        return self.engine.target.context_length
