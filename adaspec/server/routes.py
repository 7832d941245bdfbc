"""The OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions.

A request is checked (model, prompt, parameters) and submitted before any byte of the
answer is sent, so every refusal, a full queue or a prompt too long included, is a status
code even for a streamed request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from adaspec.errors import ConfigError
from adaspec.server import responses
from adaspec.server.errors import APIError, translate
from adaspec.server.generation import Completion
from adaspec.server.schemas import ChatCompletionRequest, CompletionRequest, GenerationRequest
from adaspec.server.state import ServerState

log = logging.getLogger("adaspec.server")
router = APIRouter(prefix="/v1")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DISCONNECT_POLL_S = 0.1
T = TypeVar("T")
# What a request whose client left is answered (read by nobody; /metrics counts the code).
CLIENT_GONE = APIError(499, "the client closed the connection", "cancelled", code="client_gone")


def server_of(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    server = server_of(request)
    model = {
        "id": server.settings.model_id,
        "object": "model",
        "created": server.created,
        "owned_by": "adaspec",
        "adaspec": speculation_setup(server),
    }
    return {"object": "list", "data": [model]}


def speculation_setup(server: ServerState) -> dict[str, Any]:
    """How the server speculates: what its chat page shows, and any client may read."""
    engine, settings = server.engine, server.settings
    arms = list(engine.drafters.arms)
    return {
        "drafter": settings.drafter or ",".join(arms),
        "policy": settings.policy or None,
        "drafters": arms,
        "backend": engine.target.name,
    }


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    server = server_of(request)
    check_model(server, body.model)
    prompt = server.tokenizer.apply_chat(body.chat())
    return await answer(server, request, "chat", body, prompt)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    server = server_of(request)
    check_model(server, body.model)
    return await answer(server, request, "text", body, prompt_ids(server, body.prompt))


def check_model(server: ServerState, model: str | None) -> None:
    if not server.serves(model):
        message = f"model {model!r} is not served here; GET /v1/models lists the one that is"
        raise APIError(404, message, param="model", code="model_not_found")


def prompt_ids(server: ServerState, prompt: str | list[str] | list[int]) -> list[int]:
    """Token ids of a completion's prompt: text is encoded, ids are checked."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], str)):
        text = prompt if isinstance(prompt, str) else str(prompt[0])
        if not text:
            raise ConfigError("the prompt is empty; give some text to continue")
        return server.tokenizer.encode(text)
    ids = [int(i) for i in prompt]
    vocab = server.engine.target.vocab_size
    if any(not 0 <= i < vocab for i in ids):
        raise APIError(400, f"prompt: token ids must be in 0..{vocab - 1}", param="prompt")
    return ids


async def answer(
    server: ServerState,
    request: Request,
    kind: str,
    body: GenerationRequest,
    prompt: list[int],
) -> JSONResponse | StreamingResponse:
    """Submit the request, then answer it whole or as a stream of server-sent events."""
    scheduler = server.ready()
    limit = body.token_limit() or max(1, server.context_length() - len(prompt))
    frame = responses.Frame(kind, server.settings.model_id)
    completion = Completion(
        scheduler,
        prompt,
        body.config(limit),
        body.stops(),
        server.tokenizer,
        server.metrics,
        name=frame.id,
    )
    if body.stream:
        events = stream(frame, completion, body.include_usage())
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    text = await unless_gone(completion.whole(), request)
    if text is None:  # cancelled as a stream's request is (a cancel does not close pieces())
        completion.abandon()
        return CLIENT_GONE.response()
    assert completion.outcome is not None  # set once the pieces are exhausted
    return JSONResponse(responses.body(frame, text, completion.outcome))


async def unless_gone(work: Awaitable[T], request: Request) -> T | None:
    """``work``'s result; None where the client left first (``work`` is then cancelled).
    Starlette tells of a disconnect only when asked, so it is asked every DISCONNECT_POLL_S
    while the work runs."""
    task = asyncio.ensure_future(work)
    while not (await asyncio.wait({task}, timeout=DISCONNECT_POLL_S))[0]:
        if await request.is_disconnected():
            task.cancel()
            return None
    return task.result()


async def stream(frame: responses.Frame, completion: Completion, usage: bool) -> AsyncIterator[str]:
    """The chunks of one answer: the role (chat), the text, the end, usage if asked."""
    extra: dict[str, Any] = {"usage": None} if usage else {}
    if frame.kind == "chat":
        yield responses.event(responses.chunk(frame, "", role=True) | extra)
    try:
        async for piece in completion.pieces():
            mark = {"adaspec": responses.step_mark(piece)} if piece.step else {}
            yield responses.event(responses.chunk(frame, piece.text) | extra | mark)
    except Exception as error:  # headers are sent: the error goes in the stream
        yield responses.event(translate(error).body())
        yield responses.DONE
        return
    outcome = completion.outcome
    assert outcome is not None  # set once the pieces are exhausted
    last = responses.chunk(frame, None, outcome.finish_reason) | extra
    tail = {"adaspec": responses.speculation(outcome.stats)}
    if usage:
        yield responses.event(last)
        yield responses.event(responses.usage_chunk(frame, outcome) | tail)
    else:
        yield responses.event(last | tail)
    yield responses.DONE
