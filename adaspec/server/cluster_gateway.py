"""The front of a cluster: one FastAPI app that hands every request to a replica, whole, and
answers for the replicas as one server.

A request goes to a replica through ``Forward`` (in a cluster, a Ray Serve handle call,
routed to a replica with few requests in flight). Nothing is sent to the client until the
replica's answer has begun (a stream's first chunk, a whole body), so a replica lost before
that costs nothing: the request is retried on another. One lost mid-stream ends the stream
with an OpenAI-style error event; a whole answer that no replica could give is a 503 JSON
error. /health counts the ready replicas; /metrics is every replica's, labelled by replica.
No Ray here: cluster.py supplies the calls, tests supply fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client.parser import text_string_to_metric_families

from adaspec.server import routes
from adaspec.server.errors import APIError
from adaspec.server.routes import CLIENT_GONE

log = logging.getLogger("adaspec.server")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


@dataclass(frozen=True)
class Forwarded:
    """A request as a replica's app receives it."""

    method: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


# A replica's answer: {"status": int, "headers": [[k, v]...]} first, then {"body": bytes}...
Forward = Callable[[Forwarded], AsyncIterator[dict[str, Any]]]


@dataclass(frozen=True)
class Replicas:
    """What the gateway asks of the cluster."""

    forward: Forward
    ready: Callable[[], Awaitable[int]]  # replicas running now
    metrics: Callable[[], Awaitable[dict[str, str]]]  # replica id -> its /metrics text
    is_lost: Callable[[BaseException], bool]  # the error says a replica died or left
    attempts: int = 3  # tries of a request whose replica was lost before it answered


def replica_lost(detail: str) -> APIError:
    message = f"the replica serving this request was lost ({detail}); send it again"
    return APIError(503, message, "service_unavailable", code="replica_lost")


def create_gateway(replicas: Replicas) -> FastAPI:
    app = FastAPI(title="adaspec cluster", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> JSONResponse:
        ready = await replicas.ready()
        body = {"status": "ok" if ready else "loading", "replicas": ready}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        texts = await replicas.metrics()
        return Response(merge_metrics(texts), media_type="text/plain; version=0.0.4")

    @app.api_route("/{path:path}", methods=METHODS)
    async def relay(path: str, request: Request) -> Response:
        body = await request.body()
        forwarded = Forwarded(
            request.method, request.url.path, request.url.query, request.headers.raw, body
        )
        return await unless_gone(answer(replicas, forwarded), request)

    return app


async def unless_gone(answering: Awaitable[Response], request: Request) -> Response:
    """The answer, unless the client leaves before it begins: then the request is
    cancelled on its replica (the lone server's rule for a whole answer, routes.py)."""
    response = await routes.unless_gone(answering, request)
    return CLIENT_GONE.response() if response is None else response


async def answer(replicas: Replicas, request: Forwarded) -> Response:
    """The first replica's answer that begins; a lost replica's request goes to another."""
    detail = "no replica answered"
    for _ in range(replicas.attempts):
        parts = replicas.forward(request)
        try:
            start = await anext(parts)
            first = await anext(parts, {"body": b""})
        except Exception as error:
            await close(parts)
            if not replicas.is_lost(error):
                raise
            detail = type(error).__name__
            log.warning(
                "%s %s: replica lost before it answered; retrying", request.method, request.path
            )
            continue
        except asyncio.CancelledError:
            await close(parts)  # the client left: cancel the request on its replica
            raise
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
        headers.pop("content-length", None)
        status = start["status"]
        if headers.get("content-type", "").startswith("text/event-stream"):
            chunks = relay_stream(first["body"], parts, replicas.is_lost)
            return StreamingResponse(chunks, status_code=status, headers=headers)
        rest = [first["body"]] + [part["body"] async for part in parts]
        return Response(b"".join(rest), status_code=status, headers=headers)
    return replica_lost(detail).response()


async def close(parts: AsyncIterator[dict[str, Any]]) -> None:
    aclose = getattr(parts, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(aclose())


async def relay_stream(
    first: bytes, parts: AsyncIterator[dict[str, Any]], is_lost: Callable[[BaseException], bool]
) -> AsyncIterator[bytes]:
    """A stream's chunks as they come; a replica lost mid-stream ends it with an error event
    (a client's disconnect closes ``parts``, which cancels the request on its replica)."""
    yield first
    try:
        async for part in parts:
            yield part["body"]
    except Exception as error:
        if not is_lost(error):
            raise
        log.warning("a replica was lost mid-stream: %s", type(error).__name__)
        event = replica_lost(type(error).__name__).body()
        yield f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode()
    finally:
        await close(parts)


def merge_metrics(texts: dict[str, str]) -> str:
    """Each replica's Prometheus text as one, every sample labelled ``replica``; sum or
    average across replicas in the query (``sum by (...)``)."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            name = family.name + ("_total" if family.type == "counter" else "")
            _, _, lines = families.setdefault(name, (family.type, family.documentation, []))
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # when a counter began: per process, meaningless once merged
                labels = {"replica": replica} | dict(sample.labels)
                rendered = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
                lines.append(f"{sample.name}{{{rendered}}} {number(sample.value)}")
    out = [
        "# HELP adaspec_replicas_reporting Replicas whose metrics this answer holds.",
        "# TYPE adaspec_replicas_reporting gauge",
        f"adaspec_replicas_reporting {len(texts)}",
    ]
    for name, (kind, doc, lines) in families.items():
        out += [f"# HELP {name} {escape(doc)}", f"# TYPE {name} {kind}", *lines]
    return "\n".join(out) + "\n"


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
