"""The FastAPI app: routes, guards, error handlers, metrics, and the scheduler's lifetime.

The scheduler starts with the app and the warm-up runs in the background, so the socket
answers (``/health``: 503 "loading") while it does. At shutdown uvicorn first stops
taking connections and waits for those in flight; the scheduler then finishes whatever
is left before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from adaspec import __version__
from adaspec.engine import Engine
from adaspec.server import page
from adaspec.server.errors import install_handlers
from adaspec.server.guards import LimitBody, RequireKey
from adaspec.server.metrics import CountRequests
from adaspec.server.model_thread import ModelThread
from adaspec.server.routes import router
from adaspec.server.settings import ServerSettings
from adaspec.server.state import ServerState
from adaspec.server.warmup import warm_up

PATHS = frozenset(
    {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions"}
)


def create_app(
    engine: Engine, settings: ServerSettings, thread: ModelThread | None = None
) -> FastAPI:
    """An app serving ``engine``; nothing runs until the app's lifespan starts. ``thread``:
    the one that loaded the engine, where every model call must run (ModelThread)."""
    server = ServerState(settings, engine, thread or ModelThread())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(server):
            yield

    app = FastAPI(
        title="adaspec",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.server = server
    install_handlers(app)
    app.include_router(router)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/", page.index, methods=["GET"])
    app.mount("/ui", page.assets(), name="ui")
    # The last added runs first: count every answer, then guard, then the routes.
    app.add_middleware(LimitBody, limit=settings.max_body_bytes)
    app.add_middleware(RequireKey, keys=settings.api_keys)
    app.add_middleware(CountRequests, metrics=server.metrics, paths=PATHS)
    return app


@contextlib.asynccontextmanager
async def running(server: ServerState) -> AsyncIterator[None]:
    """The models warmed up and the scheduler started, in the background; drained at the
    end."""
    scheduler = server.scheduler
    warming = asyncio.create_task(warm_up(server))
    try:
        yield
    finally:
        warming.cancel()
        await asyncio.to_thread(scheduler.shutdown, server.settings.drain_timeout_s)
        server.thread.close()


async def health(request: Request) -> JSONResponse:
    server: ServerState = request.app.state.server
    if server.status == "ok":
        return JSONResponse({"status": "ok"})
    body = {"status": server.status} | ({"message": server.problem} if server.problem else {})
    return JSONResponse(body, status_code=503)


async def metrics(request: Request) -> Response:
    server: ServerState = request.app.state.server
    text, content_type = server.metrics.exposition()
    return Response(text, media_type=content_type)
