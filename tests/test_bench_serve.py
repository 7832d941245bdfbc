"""`adaspec bench-serve` against a live `adaspec serve` on a tiny model, and against a stub
that streams like llama_cpp.server (one chunk per token, no usage): the numbers agree with
each other and with the server, failures are counted, and mistakes are one line."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from rich.console import Console
from typer.testing import CliRunner

from adaspec.api import load
from adaspec.bench.load_client import NO_FINISH, RequestRecord, itl_gaps
from adaspec.bench.questions import default_questions_path, load_questions
from adaspec.bench.serve_bench import (
    ServeBenchOptions,
    Tick,
    round_robin,
    run_serve_bench,
)
from adaspec.bench.serve_report import CHUNKS_NOTE, progress, summarize
from adaspec.cli import app
from adaspec.cli_options import counts
from adaspec.errors import ConfigError
from adaspec.server.launch import base_url, bind
from tests.live import live_server

KEY = "bench-key"
STUB_TOKENS = 5  # what the stub answers, one chunk each
CATEGORIES = ["writing", "coding", "math"]


@pytest.fixture(scope="module")
def adaspec_url(model_dir, module_cache) -> Iterator[str]:
    engine = load(str(model_dir), backend="torch", drafter="none", slots=2)
    with live_server(engine, parallel=2, api_keys=(KEY,)) as live:
        yield live.url


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    """Short prompts in three categories: the tiny model's context is 128 tokens."""
    path = tmp_path_factory.mktemp("questions") / "q.jsonl"
    rows = [
        {"question_id": 10 * c + i, "category": name, "turns": [f"{name} task {i}", "again"]}
        for c, name in enumerate(CATEGORIES)
        for i in range(2)
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def stub_app(fail_every: int = 0, cut: bool = False, delay_s: float = 0.0) -> FastAPI:
    """Streams like llama_cpp.server: a role chunk, one chunk per token, a finish chunk
    (none with ``cut``), no usage even when asked; every ``fail_every``-th request a 500."""
    stub = FastAPI()
    calls = itertools.count(1)
    head = {"id": "stub", "object": "chat.completion.chunk", "created": 0, "model": "stub-model"}

    def event(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return f"data: {json.dumps(head | {'choices': [choice]})}\n\n"

    @stub.get("/v1/models")
    def models() -> dict:
        model = {"id": "stub-model", "object": "model", "created": 0, "owned_by": "me"}
        return {"object": "list", "data": [model]}

    @stub.post("/v1/chat/completions")
    async def chat(body: dict):
        if fail_every and next(calls) % fail_every == 0:
            error = {"message": "boom", "type": "server_error", "code": None}
            return JSONResponse({"error": error}, status_code=500)
        assert body["model"] == "stub-model" and body["temperature"] == 0.0

        async def events() -> AsyncIterator[str]:
            yield event({"role": "assistant"})
            for i in range(min(STUB_TOKENS, body["max_tokens"])):
                await asyncio.sleep(delay_s)
                yield event({"content": f"t{i} "})
            if not cut:
                yield event({}, "length")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return stub


@contextmanager
def serving(asgi) -> Iterator[str]:
    """Any ASGI app on a free port of 127.0.0.1 in a thread, stopped on leaving."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, args=([sock],), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the stub did not start"
        time.sleep(0.01)
    try:
        yield base_url(sock)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def quiet(tick) -> None:
    pass


def test_levels_against_adaspec_serve_and_a_peer_without_usage(adaspec_url, questions, tmp_path):
    with serving(stub_app()) as stub_url:
        options = ServeBenchOptions(
            urls=(adaspec_url, stub_url + "/v1/"),
            labels=("adaspec", "stub"),
            concurrency=(1, 2),
            questions=questions,
            max_tokens=8,
            api_key=KEY,
            out=tmp_path,
        )
        outcome = run_serve_bench(options, quiet)
    assert [s.model for s in outcome.servers] == ["tiny", "stub-model"]
    for label, levels in outcome.levels.items():
        assert [(lv.concurrency, lv.requests, lv.failed) for lv in levels] == [(1, 4, 0), (2, 8, 0)]
        for level in levels:
            records = level.records
            assert level.output_tokens == sum(r.output_tokens for r in records)
            assert level.tokens_per_s == pytest.approx(level.output_tokens / level.wall_s)
            assert level.requests_per_s == pytest.approx(len(records) / level.wall_s)
            assert level.wall_s >= max(r.latency_s for r in records)
            assert level.ttft_p50_s <= level.ttft_p95_s <= max(r.latency_s for r in records)
            assert 0 < level.itl_p50_s <= level.itl_p95_s
            assert all(r.finish_reason and 0 < r.output_tokens <= 8 for r in records)
            assert [r.category for r in records[:3]] == CATEGORIES  # a mix at every level
            assert level.tokens_from_chunks == (label == "stub")
        first, second = sorted(levels[1].records, key=lambda r: r.start_s)[:2]
        assert second.start_s < first.start_s + first.latency_s  # two clients at once
    check_usage_is_the_servers(adaspec_url, outcome.levels["adaspec"], questions)
    assert all(r.output_tokens == 5 for lv in outcome.levels["stub"] for r in lv.records)
    check_outputs(tmp_path, [adaspec_url, stub_url])


def test_turns_make_each_clients_requests_conversations(adaspec_url, questions, tmp_path):
    """Turn 2 of a conversation is sent with turn 1's question and answer before it; the
    report adds later turns' TTFT and the share of prompt tokens the server had cached."""
    options = ServeBenchOptions(
        urls=(adaspec_url,),
        concurrency=(1,),
        per_client=4,
        questions=questions,
        max_tokens=6,
        api_key=KEY,
        out=tmp_path,
        turns=2,
    )
    level = run_serve_bench(options, quiet).levels[options.server_labels()[0]][0]
    records = level.records
    assert [r.turn for r in records] == [1, 2, 1, 2]
    for first, second in (records[:2], records[2:]):
        assert second.prompt_tokens > first.prompt_tokens + first.output_tokens
    assert all(r.cached_tokens is not None for r in records)
    assert level.later_ttft_p50_s is not None and level.cached_share is not None
    assert "later turns' TTFT p50 ms" in (tmp_path / "report.md").read_text()


def check_usage_is_the_servers(url: str, levels, questions: Path) -> None:
    """The tokens counted are the server's: the same greedy answer, asked without a stream,
    reports the same completion_tokens, at every level."""
    prompts = {q.question_id: q.prompt for q in load_questions(questions)}
    tokens = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        for question_id, prompt in prompts.items():
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
            answer = http.post("/v1/chat/completions", json=body | {"temperature": 0})
            tokens[question_id] = answer.json()["usage"]["completion_tokens"]
    for level in levels:
        assert all(r.tokens_from_usage for r in level.records)
        assert [r.output_tokens for r in level.records] == [
            tokens[r.question_id] for r in level.records
        ]


def check_outputs(out: Path, urls: list[str]) -> None:
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["labels"] == ["adaspec", "stub"]
    assert results["meta"]["urls"] == urls  # "/v1/" taken off
    assert {"platform", "cpus"} <= set(results["meta"]["machine"])
    for server in results["servers"]:
        counts = [len(level["records"]) for level in server["levels"]]
        assert counts == [4, 8], server["label"]
    report = (out / "report.md").read_text()
    assert "## 1 concurrent client\n" in report and "## 2 concurrent clients" in report
    assert "| adaspec |" in report and "| stub |" in report and "1.00×" in report
    assert CHUNKS_NOTE in report
    assert (out / "throughput.png").read_bytes()[:4] == b"\x89PNG"


def test_failures_are_counted_and_kept(tmp_path, questions):
    with serving(stub_app(fail_every=3)) as url:
        options = ServeBenchOptions(
            urls=(url,), concurrency=(2,), requests=6, questions=questions, warmup=0, out=tmp_path
        )
        (level,) = run_serve_bench(options, quiet).levels[options.server_labels()[0]]
    assert (level.requests, level.failed) == (6, 2)
    assert level.output_tokens == 4 * STUB_TOKENS
    (error,) = level.errors
    assert "InternalServerError" in error and "boom" in error
    assert "## Failed requests" in (tmp_path / "report.md").read_text()


def test_a_stream_cut_short_or_too_slow_is_a_failure(tmp_path, questions):
    for app_args, timeout, expected in (
        ({"cut": True}, 30.0, NO_FINISH),
        ({"delay_s": 5.0}, 0.2, "no complete answer within --timeout 0.2 s"),
    ):
        with serving(stub_app(**app_args)) as url:
            options = ServeBenchOptions(
                urls=(url,),
                concurrency=(1,),
                requests=2,
                questions=questions,
                warmup=0,
                timeout=timeout,
                out=tmp_path,
            )
            (level,) = run_serve_bench(options, quiet).levels[options.server_labels()[0]]
        assert (level.failed, level.errors) == (2, {expected: 2})
        assert level.ttft_p95_s is None and level.tokens_per_s == 0.0


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_shows_each_level_as_it_ends(terminal):
    record = RequestRecord(0, 1, "math", 0.0, 2.0, ok=True, ttft_s=0.5, output_tokens=10)
    level = summarize(2, [record])
    console = Console(file=io.StringIO(), force_terminal=terminal, width=200)
    with progress(console, total=3) as on_tick:
        on_tick(Tick(1, 3, "a · warm-up"))
        on_tick(Tick(2, 3, "a · 2 clients"))
        on_tick(Tick(2, 3, "a · 2 clients", level))
    shown = console.file.getvalue()
    assert "a · 2 clients: 10 tokens in 2.0 s = 5.00 tok/s, 1/1 requests ok" in shown
    assert ("2/3 requests" in shown) == terminal  # the bar, on a terminal only


def test_itl_is_per_token_where_usage_says_how_many():
    assert itl_gaps([0.0, 1.0, 3.0], tokens=5, from_usage=True) == [0.5, 1.0]
    assert itl_gaps([0.0, 1.0, 3.0], tokens=3, from_usage=False) == [1.0, 2.0]
    assert itl_gaps([0.0], tokens=4, from_usage=True) == []


def test_round_robin_mixes_the_shipped_categories():
    questions = load_questions(default_questions_path())
    categories = list(dict.fromkeys(q.category for q in questions))
    first = round_robin(questions, len(categories))
    assert [q.category for q in first] == categories
    again = round_robin(questions, 2 * len(questions))
    assert again[: len(questions)] == again[len(questions) :]
    assert len({q.question_id for q in again[: len(questions)]}) == len(questions)


@pytest.mark.parametrize(
    ("text", "levels"), [("1,2,4,8", (1, 2, 4, 8)), ("4, 1,4", (1, 4)), ("3", (3,))]
)
def test_parse_concurrency(text, levels):
    assert counts(text, "--concurrency") == levels


runner = CliRunner()


def bench_serve(*args: str):
    return runner.invoke(app, ["bench-serve", *args])


def one_line_error(result, *phrases: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert all(p in lines[0] for p in phrases), result.output
    assert "Traceback" not in result.output


def test_cli_runs_and_prints_the_table(tmp_path, questions):
    with serving(stub_app()) as url:
        args = ["--concurrency", "1,2", "--requests", "2", "--max-tokens", "4"]
        result = bench_serve(url, *args, "--questions", str(questions), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "## 2 concurrent clients" in result.output and "| tokens/s |" in result.output
    assert (tmp_path / "results.json").is_file() and (tmp_path / "throughput.png").is_file()


def test_cli_unreachable_server_is_one_line(tmp_path):
    sock = bind("127.0.0.1", 0)
    url = base_url(sock)
    sock.close()  # nothing listens there now
    one_line_error(bench_serve(url, "--out", str(tmp_path)), url, "is the server running?")
    assert not any(tmp_path.iterdir())  # checked before any load


def listing(answer: object) -> FastAPI:
    """A server whose GET /v1/models answers ``answer`` (and nothing else)."""
    listed = FastAPI()
    listed.get("/v1/models")(lambda: answer)
    return listed


@pytest.mark.parametrize(
    ("asgi", "phrases"),
    [
        (FastAPI(), ["answered HTTP 404", "OpenAI-compatible"]),
        (listing(HTMLResponse("<html></html>")), ["HTTP 200 without a list of models"]),
        (listing({"data": []}), ["lists no model", "--model"]),
    ],
)
def test_cli_server_that_is_not_openai_compatible(asgi, phrases):
    with serving(asgi) as url:
        one_line_error(bench_serve(url), url, *phrases)


def test_cli_wrong_key_is_one_line(adaspec_url):
    one_line_error(bench_serve(adaspec_url, "--api-key", "wrong"), "--api-key")


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["--concurrency", "0,2"], ["--concurrency", "'0,2'"]),
        (["--concurrency", "two"], ["--concurrency"]),
        (["--concurrency", ""], ["--concurrency"]),
        (["--label", "a", "--label", "b"], ["2 --label for 1 URLs"]),
        (["--requests", "2", "--concurrency", "4"], ["--requests 2", "--concurrency 4"]),
        (["--max-tokens", "0"], ["--max-tokens"]),
        (["--per-client", "0"], ["--per-client"]),
        (["--timeout", "0"], ["--timeout"]),
        (["--turns", "0"], ["--turns"]),
        (["--questions", "/nonexistent.jsonl"], ["not found"]),
    ],
)
def test_cli_bad_options_are_one_line(args, phrases):
    one_line_error(bench_serve("http://127.0.0.1:9", *args), *phrases)


def test_cli_bad_urls_are_one_line():
    one_line_error(bench_serve("localhost:8000"), "not a server URL")
    same = ["http://127.0.0.1:9", "http://127.0.0.1:9/v1"]
    one_line_error(bench_serve(*same), "--label")


def test_requests_per_level_follow_the_clients_unless_given():
    options = ServeBenchOptions(urls=("http://127.0.0.1:9",), per_client=2)
    assert [options.level_requests(c) for c in (1, 4)] == [2, 8]
    given = ServeBenchOptions(urls=("http://127.0.0.1:9",), requests=8, per_client=2)
    assert given.level_requests(4) == 8


def test_options_refuse_an_empty_url_list():
    with pytest.raises(ConfigError, match="at least one server URL"):
        ServeBenchOptions(urls=())
