"""One replica of a cluster: the engine, loaded once, and the very app ``adaspec serve``
runs alone (``create_app``), driven in-process by the requests the gateway forwards.

The app's lifespan (warm-up, scheduler, drain) runs as it would under uvicorn; the replica
tells Ray Serve it is ready only once the warm-up settled. A forwarded request runs through
the app as an ASGI call whose messages come back as they are sent, so a stream streams;
when the gateway stops reading (its client left), the app is told the client disconnected
and cancels the request, as the lone server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import ASGIApp, Message

from adaspec.build import EngineSpec
from adaspec.server.app import create_app
from adaspec.server.cluster_gateway import Forwarded
from adaspec.server.launch import load_engine
from adaspec.server.model_thread import ModelThread
from adaspec.server.settings import ServerSettings
from adaspec.server.state import ServerState

DRAIN_S = 5.0  # after the gateway stops reading, most time the app takes to wind down


class Replica:
    """Ray Serve's deployment class (cluster.py deploys it); plain Python otherwise."""

    async def __init__(self, spec: EngineSpec, settings: ServerSettings) -> None:
        self.thread = ModelThread()
        engine = await asyncio.to_thread(load_engine, spec, self.thread)
        self.app = create_app(engine, settings, self.thread)
        self.server: ServerState = self.app.state.server
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self._life = self.app.router.lifespan_context(self.app)
        await self._life.__aenter__()
        await asyncio.to_thread(self.server.settled.wait)
        self.check_health()

    def check_health(self) -> None:
        """Ray Serve's probe: a replica whose warm-up failed is replaced."""
        if self.server.status == "error":
            raise RuntimeError(f"the warm-up failed: {self.server.problem}")

    async def forward(self, request: Forwarded) -> AsyncIterator[dict[str, Any]]:
        async for part in asgi_call(self.app, request):
            yield part

    async def metrics(self) -> tuple[str, str]:
        text, _ = self.server.metrics.exposition()
        return self.name, text.decode()

    async def __del__(self) -> None:
        await self._life.__aexit__(None, None, None)


async def asgi_call(app: ASGIApp, request: Forwarded) -> AsyncIterator[dict[str, Any]]:
    """``request`` through ``app``: {"status", "headers"}, then {"body"} parts as sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "root_path": "",
        "query_string": request.query.encode(),
        "headers": [(bytes(k), bytes(v)) for k, v in request.headers],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    sent: asyncio.Queue[Message | None] = asyncio.Queue()
    gone = asyncio.Event()
    unread = [request.body]

    async def receive() -> Message:
        if unread:
            return {"type": "http.request", "body": unread.pop(), "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await sent.put(message)

    task = asyncio.create_task(app(scope, receive, send))
    task.add_done_callback(lambda _: sent.put_nowait(None))
    try:
        while (message := await sent.get()) is not None:
            if message["type"] == "http.response.start":
                yield {"status": message["status"], "headers": list(message.get("headers", []))}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield {"body": bytes(message["body"])}
                if not message.get("more_body", False):
                    break
    finally:
        gone.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), DRAIN_S)
