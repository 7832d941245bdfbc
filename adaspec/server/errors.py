"""Errors at the HTTP edge, in OpenAI's shape: ``{"error": {message, type, param, code}}``.

Everything below the app raises exceptions (AdaspecError for what a user can fix); they are
translated here, once, so clients written for OpenAI read adaspec's errors as they read
OpenAI's, and no request ever sees a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from adaspec.errors import AdaspecError
from adaspec.server.scheduler import QueueFull, ShuttingDown

log = logging.getLogger("adaspec.server")

RETRY_AFTER_S = 1  # a full queue frees a place within about one request's time


class APIError(Exception):
    """A request the server refuses, with the status and OpenAI error fields to answer."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict[str, Any]:
        fields = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**fields, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def translate(error: Exception) -> APIError:
    """The API error for an exception raised below the app; an unexpected one is a bug,
    logged with its traceback and answered 500 without it."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, QueueFull):
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return APIError(429, str(error), "rate_limit_error", code="queue_full", headers=headers)
    if isinstance(error, ShuttingDown):
        return APIError(503, str(error), "unavailable_error", code="shutting_down")
    if isinstance(error, AdaspecError):
        return APIError(400, str(error))
    log.error("internal error", exc_info=error)
    return APIError(500, "internal server error; see the server's log", "internal_error")


UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _field(loc: Sequence[str | int]) -> str | None:
    """``body.messages.0.role`` -> ``messages.0.role``; None for the body itself. Pydantic
    names the member of a union it tried (``stop.list[str]``): the field ends before it."""
    parts: list[str] = []
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        text = str(part)
        if text in UNION_TAGS or not text.replace("_", "").isalnum():
            break
        parts.append(text)
    return ".".join(parts) or None


def validation_error(error: RequestValidationError) -> APIError:
    """Pydantic's first complaint about a body, as one OpenAI-style message."""
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON", code="invalid_json")
    param = _field(first.get("loc", ()))
    if param is None:
        return APIError(400, "the request body must be a JSON object", code="invalid_body")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = "this field is required"
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


def refusal(request: Request, error: APIError) -> JSONResponse:
    """The answer to a refused request, and its one log line."""
    log.info("%s %s: %d %s", request.method, request.url.path, error.status, error.message)
    return error.response()


def install_handlers(app: FastAPI) -> None:
    """Every error path of the app answers in the OpenAI shape."""

    async def on_api_error(request: Request, error: Exception) -> JSONResponse:
        return refusal(request, translate(error))

    async def on_validation(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return refusal(request, validation_error(error))

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return refusal(request, APIError(error.status_code, str(error.detail), kind))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(AdaspecError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_api_error)
