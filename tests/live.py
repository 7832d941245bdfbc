"""A real server for tests: uvicorn in a background thread, on a free port of 127.0.0.1,
stopped (and its scheduler drained) when the ``with`` block ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from adaspec.engine import Engine
from adaspec.server.app import create_app
from adaspec.server.launch import base_url, bind
from adaspec.server.model_thread import ModelThread
from adaspec.server.settings import ServerSettings


class LiveServer:
    def __init__(
        self, engine: Engine, settings: ServerSettings, thread: ModelThread | None = None
    ) -> None:
        self.app = create_app(engine, settings, thread)
        self.sock = bind("127.0.0.1", 0)
        self.url = base_url(self.sock)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=([self.sock],), daemon=True)

    @property
    def state(self):
        return self.app.state.server

    def start(self, ready: bool = True, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "no server"
            time.sleep(0.01)
        while ready and self.state.status != "ok":
            assert self.state.status != "error", self.state.problem
            assert time.monotonic() < deadline, "the warm-up did not end"
            time.sleep(0.01)

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"
        self.sock.close()


@contextmanager
def live_server(
    engine: Engine, ready: bool = True, thread: ModelThread | None = None, **settings
) -> Iterator[LiveServer]:
    """``thread``: the one that loaded ``engine``, where a real backend's calls must run."""
    settings.setdefault("model_id", "tiny")
    server = LiveServer(engine, ServerSettings(**settings), thread)
    server.start(ready)
    try:
        yield server
    finally:
        server.stop()


def client(server: LiveServer, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=headers, timeout=30.0)


def metric_samples(text: str) -> dict[str, float]:
    """Every sample of a /metrics answer, keyed by name and labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
