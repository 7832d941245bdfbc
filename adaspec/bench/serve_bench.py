"""``adaspec bench-serve``: closed-loop load on OpenAI-compatible servers, level by level.

At each concurrency N, N clients each send their next request as soon as their previous one
ends, until the level's requests are spent, so the server always has N requests in flight
(but for the tail). Every level sends the same round-robin mix of Spec-Bench categories; the
run is bounded by requests per level and a per-request timeout, and talks only to the URLs
it is given.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import openai

from adaspec.bench.load_client import RequestRecord, base_url, measure, served_models
from adaspec.bench.questions import Question, default_questions_path, load_questions
from adaspec.bench.serve_report import Level, clients, summarize, write_outputs
from adaspec.errors import ConfigError

CHECK_TIMEOUT_S = 10.0  # GET /v1/models before the load: a live server answers at once
WARMUP_TOKENS = 16  # a warm-up request loads and compiles; its length does not matter


@dataclass(frozen=True)
class ServeBenchOptions:
    urls: tuple[str, ...]
    labels: tuple[str, ...] = ()  # one per URL; empty: host:port
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    requests: int | None = None  # per level; None: per_client per client
    per_client: int = 4
    questions: Path = field(default_factory=default_questions_path)
    max_tokens: int = 128
    model: str | None = None  # None: the first model each server lists
    api_key: str = "EMPTY"
    warmup: int = 1  # unmeasured requests per server before its first level
    timeout: float = 300.0  # seconds a request may take, stream included
    out: Path = Path("bench-serve-out")
    turns: int = 1  # each client's requests as conversations of this many turns

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError("give at least one server URL, e.g. http://127.0.0.1:8000")
        if self.labels and len(self.labels) != len(self.urls):
            raise ConfigError(
                f"{len(self.labels)} --label for {len(self.urls)} URLs; give one per URL, in order"
            )
        if len(set(self.server_labels())) != len(self.urls):
            raise ConfigError("two servers would share a label; give each URL its own --label")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError("--concurrency takes positive whole numbers, e.g. 1,2,4,8")
        if self.requests is not None and self.requests < max(self.concurrency):
            raise ConfigError(
                f"--requests {self.requests} is below --concurrency {max(self.concurrency)}: "
                "some clients would send nothing"
            )
        if min(self.max_tokens, self.per_client, self.turns) < 1 or self.warmup < 0:
            raise ConfigError("--max-tokens, --per-client and --turns must be >= 1, --warmup >= 0")
        if self.timeout <= 0:
            raise ConfigError("--timeout must be above 0 seconds")

    def server_labels(self) -> list[str]:
        return list(self.labels) or [urlsplit(base_url(u)).netloc for u in self.urls]

    def level_requests(self, concurrency: int) -> int:
        return self.requests or self.per_client * concurrency

    def total_requests(self) -> int:
        per_server = self.warmup + sum(self.level_requests(c) for c in self.concurrency)
        return per_server * len(self.urls)


@dataclass(frozen=True)
class Server:
    url: str
    label: str
    model: str


@dataclass(frozen=True)
class Tick:
    """Progress: requests done of all, where the run is, and a level when one just ended."""

    done: int
    total: int
    where: str  # the server's label and the level (or its warm-up)
    level: Level | None = None


@dataclass(frozen=True)
class Outcome:
    servers: list[Server]
    levels: dict[str, list[Level]]  # label -> one per concurrency
    markdown: str
    paths: list[Path]


def round_robin(questions: Sequence[Question], n: int) -> list[Question]:
    """The first n questions taking each category in turn (file order within one), so even a
    small level sees a mix; the list repeats if n is larger than the file."""
    by_category: dict[str, list[Question]] = defaultdict(list)
    for question in questions:
        by_category[question.category].append(question)
    interleaved: list[Question] = []
    for depth in range(max(len(qs) for qs in by_category.values())):
        interleaved += [qs[depth] for qs in by_category.values() if depth < len(qs)]
    return [interleaved[i % len(interleaved)] for i in range(n)]


def check_servers(options: ServeBenchOptions) -> list[Server]:
    """Each URL answers GET /v1/models (else one clear error, before any load) and names the
    model to ask for."""
    servers = []
    for url, label in zip(options.urls, options.server_labels(), strict=True):
        models = served_models(url, options.api_key, CHECK_TIMEOUT_S)
        if not (options.model or models):
            raise ConfigError(f"{url} lists no model; name one with --model")
        servers.append(Server(base_url(url), label, options.model or models[0]))
    return servers


async def run_level(
    client: openai.AsyncOpenAI,
    server: Server,
    prompts: Sequence[Question],
    concurrency: int,
    options: ServeBenchOptions,
    on_request: Callable[[], None],
) -> Level:
    """``concurrency`` clients in a closed loop over ``prompts``, then the level's numbers.
    With ``turns`` > 1 each client's requests form conversations: a question follows the
    client's earlier ones and their answers, for ``turns`` turns, then a new one begins."""
    queue = iter(enumerate(prompts))  # shared: each client takes the next prompt
    records: list[RequestRecord] = []
    start = time.perf_counter()

    async def one_client() -> None:
        history: list[dict[str, str]] = []
        for index, question in queue:
            if len(history) >= 2 * options.turns:
                history = []
            record = await measure(
                client,
                server.model,
                index,
                question,
                options.max_tokens,
                options.timeout,
                start,
                history if options.turns > 1 else None,
            )
            records.append(record)
            on_request()

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return summarize(concurrency, sorted(records, key=lambda r: r.index))


async def run_server(
    server: Server,
    prompts: Sequence[Question],
    options: ServeBenchOptions,
    tick: Callable[..., None],
) -> list[Level]:
    """The warm-up, then every level, through one client (its connections kept alive)."""
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/v1",
        api_key=options.api_key,
        timeout=options.timeout,
        max_retries=0,  # a failure is measured, not hidden by a retry
    ) as client:
        for index, question in enumerate(prompts[: options.warmup]):
            warm = min(options.max_tokens, WARMUP_TOKENS)
            await measure(client, server.model, index, question, warm, options.timeout, 0.0)
            tick(f"{server.label} · warm-up")
        levels = []
        for concurrency in options.concurrency:
            n = options.level_requests(concurrency)
            where = f"{server.label} · {clients(concurrency)}"
            level = await run_level(
                client, server, prompts[:n], concurrency, options, partial(tick, where)
            )
            levels.append(level)
            tick(where, level)
        return levels


def run_serve_bench(options: ServeBenchOptions, on_tick: Callable[[Tick], None]) -> Outcome:
    """Check every server, load each in turn (one at a time, so they never share the
    machine), then write results.json, report.md and throughput.png to ``options.out``."""
    questions = load_questions(options.questions)
    servers = check_servers(options)
    most = max(options.level_requests(c) for c in options.concurrency)
    prompts = round_robin(questions, max(most, options.warmup))
    done = 0
    total = options.total_requests()

    def tick(where: str, level: Level | None = None) -> None:
        nonlocal done
        done += level is None
        on_tick(Tick(done, total, where, level))

    levels = {s.label: asyncio.run(run_server(s, prompts, options, tick)) for s in servers}
    markdown, paths = write_outputs(options.out, meta(options, servers), levels)
    return Outcome(servers, levels, markdown, paths)


def meta(options: ServeBenchOptions, servers: Sequence[Server]) -> dict:
    return {
        "urls": [s.url for s in servers],
        "labels": [s.label for s in servers],
        "models": {s.label: s.model for s in servers},
        "concurrency": list(options.concurrency),
        "requests_per_level": {c: options.level_requests(c) for c in options.concurrency},
        "max_tokens": options.max_tokens,
        "warmup": options.warmup,
        "turns": options.turns,
        "timeout_s": options.timeout,
        "questions": str(options.questions),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
