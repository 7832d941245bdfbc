"""One streamed chat request to an OpenAI-compatible server, and what it cost: time to first
token, the gaps between tokens, output tokens (the server's usage where it reports one).

The official ``openai`` client does the talking, so what is measured is what a user of that
client sees; every failure becomes a record with its error, never an exception, so one bad
answer cannot stop a load run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from urllib.parse import urlsplit

import httpx
import openai

from adaspec.bench.questions import Question
from adaspec.errors import AdaspecError, ConfigError

NO_FINISH = (
    "the stream ended without a finish_reason (llama_cpp.server cuts a request short when "
    "another arrives unless started with --interrupt_requests False)"
)
ERROR_CHARS = 300  # an error kept in a record is cut to this, so results.json stays readable


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it; times in seconds, ``start_s`` from its level's start."""

    index: int
    question_id: int | str
    category: str
    start_s: float
    latency_s: float  # send to the stream's end (or failure)
    ok: bool
    error: str | None = None
    ttft_s: float | None = None  # send to the first chunk with text
    output_tokens: int = 0
    tokens_from_usage: bool = False  # False: counted from content chunks (no usage sent)
    content_chunks: int = 0
    finish_reason: str | None = None
    itl_s: tuple[float, ...] = ()  # [content_chunks - 1] per-token gaps
    turn: int = 1  # its place in a conversation (--turns); 1: a fresh one
    prompt_tokens: int | None = None  # the server's count (None: no usage sent)
    cached_tokens: int | None = None  # of those, what it had cached (None: not said)


def base_url(url: str) -> str:
    """The server's root, whether the user wrote it with or without ``/v1``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{url!r} is not a server URL; write it as http://HOST:PORT")
    root = url.strip().rstrip("/")
    return root.removesuffix("/v1")


def served_models(url: str, api_key: str, timeout: float) -> list[str]:
    """GET /v1/models, before any load: an unreachable or foreign server is one clear line."""
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        answer = httpx.get(f"{base_url(url)}/v1/models", headers=headers, timeout=timeout)
    except (httpx.HTTPError, httpx.InvalidURL):  # refused, no such host, no answer in time
        raise AdaspecError(f"cannot reach {url}: is the server running?") from None
    if answer.status_code in (401, 403):
        raise AdaspecError(f"{url} refused the API key; pass the server's with --api-key")
    try:
        answer.raise_for_status()
        return [str(model["id"]) for model in answer.json()["data"]]
    except (httpx.HTTPStatusError, ValueError, KeyError, TypeError):
        raise AdaspecError(
            f"{url}/v1/models answered HTTP {answer.status_code} without a list of models: "
            "is it an OpenAI-compatible server?"
        ) from None


def itl_gaps(arrivals: list[float], tokens: int, from_usage: bool) -> list[float]:
    """Gaps between content chunks, per token: each gap over the tokens a chunk after the
    first carries on average ((tokens - 1) / (chunks - 1): the first carries the prefill's
    one), so a chunk of several speculated tokens counts as several tokens' latency. Without
    usage a chunk is taken for one token."""
    gaps = [b - a for a, b in pairwise(arrivals)]
    if not from_usage or len(arrivals) < 2 or tokens < 2:
        return gaps
    per_chunk = (tokens - 1) / (len(arrivals) - 1)
    return [gap / per_chunk for gap in gaps]


@dataclass
class Streamed:
    """What one streamed answer brought: when each chunk with text came, the text, and the
    server's usage where it sent one."""

    arrivals: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    usage: int | None = None  # completion tokens
    prompt: int | None = None
    cached: int | None = None  # prompt tokens the server had cached
    finish: str | None = None


async def stream_chat(
    client: openai.AsyncOpenAI, model: str, messages: Sequence[dict[str, str]], max_tokens: int
) -> Streamed:
    """Send one greedy streamed chat request and read its answer."""
    stream = await client.chat.completions.create(
        model=model,
        messages=list(messages),
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    got = Streamed()
    async with stream:
        async for chunk in stream:
            if chunk.usage is not None:
                got.usage = chunk.usage.completion_tokens
                got.prompt = chunk.usage.prompt_tokens
                details = chunk.usage.prompt_tokens_details
                got.cached = None if details is None else details.cached_tokens
            for choice in chunk.choices:
                if choice.delta is not None and choice.delta.content:
                    got.arrivals.append(time.perf_counter())
                    got.text.append(choice.delta.content)
                got.finish = choice.finish_reason or got.finish
    return got


async def measure(
    client: openai.AsyncOpenAI,
    model: str,
    index: int,
    question: Question,
    max_tokens: int,
    timeout: float,
    level_start: float,
    history: list[dict[str, str]] | None = None,
) -> RequestRecord:
    """One request within ``timeout`` seconds, as a record; a failure is kept, not raised.
    ``history``: the conversation so far, sent before the question; the question and its
    answer are appended to it."""
    sent = time.perf_counter()
    head = {"index": index, "question_id": question.question_id, "category": question.category}
    head |= {"start_s": sent - level_start, "turn": 1 + len(history or []) // 2}
    messages = [*(history or []), {"role": "user", "content": question.prompt}]
    try:
        got = await asyncio.wait_for(stream_chat(client, model, messages, max_tokens), timeout)
    except TimeoutError:
        error = f"no complete answer within --timeout {timeout:g} s"
    except (openai.OpenAIError, httpx.HTTPError, ValueError) as e:  # ValueError: a bad chunk
        error = f"{type(e).__name__}: {e}"[:ERROR_CHARS]
    else:
        error = None
    if error is not None:
        return RequestRecord(**head, latency_s=time.perf_counter() - sent, ok=False, error=error)
    latency = time.perf_counter() - sent
    if history is not None:
        history += [messages[-1], {"role": "assistant", "content": "".join(got.text)}]
    arrivals, usage = got.arrivals, got.usage
    tokens = usage if usage is not None else len(arrivals)
    return RequestRecord(
        **head,
        latency_s=latency,
        ok=got.finish is not None,
        error=None if got.finish is not None else NO_FINISH,
        ttft_s=arrivals[0] - sent if arrivals else None,
        output_tokens=tokens,
        tokens_from_usage=usage is not None,
        content_chunks=len(arrivals),
        finish_reason=got.finish,
        itl_s=tuple(itl_gaps(arrivals, tokens, usage is not None)),
        prompt_tokens=got.prompt,
        cached_tokens=got.cached,
    )
