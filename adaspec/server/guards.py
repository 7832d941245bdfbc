"""ASGI middleware that refuses a request before any route reads it: a missing or wrong API
key on /v1 (401), and a body over the size limit (413). As middleware, they answer before
the body is parsed, so a stranger's malformed body is a 401, not a parse error."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaspec.server.errors import APIError


def presented_key(headers: Headers) -> str | None:
    """The key of ``Authorization: Bearer KEY`` or ``X-Api-Key: KEY``."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key")


class RequireKey:
    """Only requests with one of ``keys`` reach /v1; /health and /metrics stay open."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app, self.keys = app, [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and scope["path"].startswith("/v1"):
            key = presented_key(Headers(scope=scope))
            if key is None or not self._known(key):
                message = "a valid API key is required: `Authorization: Bearer KEY`"
                if key is not None:
                    message = "the API key is not valid"
                error = APIError(401, message, "authentication_error", code="invalid_api_key")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _known(self, key: str) -> bool:
        given = key.encode()
        return any(hmac.compare_digest(given, known) for known in self.keys)


class LimitBody:
    """Reads the body first, up to ``limit`` bytes; past that, 413 without reading on.
    The app then reads the body from memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        body = (
            None if declared.isdigit() and int(declared) > self.limit else await self._read(receive)
        )
        if body is None:
            message = f"the request body is over the {self.limit}-byte limit"
            error = APIError(413, message, code="body_too_large")
            await error.response()(scope, receive, send)
            return
        await self.app(scope, replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return None
            more = message.get("more_body", False)
        return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over ``body`` once, then waits on the real one (for the
    disconnect a streaming response listens for)."""
    sent = False

    async def receiving() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receiving
