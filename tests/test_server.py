"""The HTTP server, live on 127.0.0.1 with a tiny model, driven by the official openai
client and plain httpx: what llama.cpp's server tests check, where it applies."""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from adaspec.api import load
from adaspec.build import EngineSpec
from adaspec.errors import ModelError
from adaspec.server.bridge import EventBridge
from adaspec.server.launch import load_engine, serve
from adaspec.server.model_thread import ModelThread
from adaspec.server.scheduler import Failed, Step, Ticket
from adaspec.server.settings import ServerSettings
from tests.live import LiveServer, client, live_server, metric_samples

PROMPTS = ["def reverse(head):", "The quick brown fox", "Summarize the following", "models run"]
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Reverse a list."},
    {"role": "assistant", "content": "Use reversed."},
    {"role": "user", "content": "And a string?"},
]
LONG = 100  # tokens of a request that is still running when the test acts on it


@pytest.fixture(scope="module", autouse=True)
def no_threads_left():
    """Set up first, torn down last: every server of this module is gone by then."""
    before = set(threading.enumerate())
    yield
    left = [t.name for t in threading.enumerate() if t not in before]
    assert not left, f"threads left behind: {left}"


@pytest.fixture(scope="module")
def reference(model_dir, module_cache):
    """Plain decoding outside any server (only the scheduler's thread may touch a server's
    engine)."""
    return load(str(model_dir), backend="torch", drafter="none")


@pytest.fixture(scope="module")
def server(model_dir, module_cache):
    engine = load(str(model_dir), backend="torch", drafter="none")
    with live_server(engine, max_body_bytes=64 * 1024) as live:
        yield live


@pytest.fixture
def slow_steps(monkeypatch):
    """Every engine step takes 20 ms more (the scheduler's thread hands it over late), so a
    request of LONG tokens is still running when a test disconnects or queues behind it."""
    original = EventBridge.on_event

    def late(self, event):
        if isinstance(event, Step):
            time.sleep(0.02)
        original(self, event)

    monkeypatch.setattr(EventBridge, "on_event", late)


def api(live: LiveServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=30)


def greedy(reference, prompt: str, tokens: int, chat: bool = False):
    tokenizer = reference.target.tokenizer
    ids = tokenizer.apply_chat(CHAT) if chat else tokenizer.encode(prompt)
    return ids, reference.generate(ids, max_new_tokens=tokens)


def events(response: httpx.Response) -> list[dict]:
    """The JSON chunks of a server-sent event stream, checked to end with [DONE]."""
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def scrape(live: LiveServer) -> dict[str, float]:
    """Every sample of /metrics, keyed by name and labels."""
    return metric_samples(httpx.get(f"{live.url}/metrics").text)


def test_health_and_models(server):
    with client(server) as http:
        assert http.get("/health").json() == {"status": "ok"}
        listed = http.get("/v1/models").json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == "tiny"
    assert listed["data"][0]["adaspec"] == {
        "drafter": "none",
        "policy": None,
        "drafters": ["none"],
        "backend": "torch",
    }
    assert [m.id for m in api(server).models.list()] == ["tiny"]


def test_completion_equals_engine_generate(server, reference):
    ids, expected = greedy(reference, PROMPTS[0], 24)
    got = api(server).completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=24)
    assert got.choices[0].text == expected.text
    assert got.choices[0].finish_reason == expected.finish_reason == "length"
    assert got.usage.prompt_tokens == len(ids)
    assert got.usage.completion_tokens == len(expected.token_ids) == 24
    assert got.usage.total_tokens == len(ids) + 24
    assert 0 <= got.usage.prompt_tokens_details.cached_tokens < len(ids)


def test_chat_equals_engine_generate_through_the_template(server, reference):
    ids, expected = greedy(reference, "", 16, chat=True)
    got = api(server).chat.completions.create(model="tiny", messages=CHAT, max_tokens=16)
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == expected.text
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(ids), 16)
    extension = got.model_extra["adaspec"]
    assert extension["drafted"] == extension["accepted"] == 0
    assert extension["mean_accepted"] == 1.0 and extension["drafters"] == {}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_streamed_text_equals_the_whole_answer(server, path):
    body = {"messages": CHAT} if "chat" in path else {"prompt": PROMPTS[1]}
    body |= {"model": "tiny", "max_tokens": 20}
    with client(server) as http:
        whole = http.post(path, json=body).json()
        asked = body | {"stream": True, "stream_options": {"include_usage": True}}
        with http.stream("POST", path, json=asked) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            chunks = events(response)
    assert len({c["id"] for c in chunks}) == 1
    *texts, end, usage = chunks
    if "chat" in path:
        assert texts[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in texts)
        assert streamed == whole["choices"][0]["message"]["content"]
    else:
        assert "".join(c["choices"][0]["text"] for c in texts) == whole["choices"][0]["text"]
    assert end["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert usage["choices"] == []
    cached = usage["usage"].pop("prompt_tokens_details")["cached_tokens"]  # the 2nd reuses
    assert 0 <= cached <= usage["usage"]["prompt_tokens"]
    whole["usage"].pop("prompt_tokens_details")
    assert usage["usage"] == whole["usage"]
    assert usage["adaspec"] == whole["adaspec"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_without_usage_ends_with_finish_reason_and_adaspec(server):
    with client(server) as http:
        body = {"prompt": PROMPTS[0], "max_tokens": 5, "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as response:
            chunks = events(response)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "adaspec" in chunks[-1] and "usage" not in chunks[-1]


def test_each_streamed_step_says_how_much_of_its_text_an_accepted_draft_wrote(model_dir):
    engine = load(
        str(model_dir), backend="torch", drafter="model", draft=str(model_dir), policy="fixed", k=3
    )
    body = {"prompt": PROMPTS[0], "max_tokens": 24}
    with live_server(engine) as live, client(live) as http:
        with http.stream("POST", "/v1/completions", json=body | {"stream": True}) as response:
            chunks = events(response)
        plain = http.post("/v1/completions", json=body | {"speculate": False}).json()
    steps = [c for c in chunks if "from_draft" in c.get("adaspec", {})]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == plain["choices"][0]["text"] and plain["adaspec"]["drafted"] == 0
    assert sum(c["adaspec"]["tokens"] for c in steps) == 24 == len(steps) * 4
    for chunk in steps:
        mark, piece = chunk["adaspec"], chunk["choices"][0]["text"]
        assert mark["drafter"] == "model" and mark["drafted"] == mark["accepted"] == 3
        assert 0 <= mark["from_draft"] <= len(piece)
    assert sum(c["adaspec"]["from_draft"] for c in steps) > 0
    assert "from_draft" not in chunks[-1]["adaspec"]  # the request's totals, as before


def test_speculate_false_decodes_plainly_with_the_same_text(model_dir, reference):
    engine = load(str(model_dir), backend="torch", drafter="ngram", policy="fixed", k=3)
    with live_server(engine) as live:
        answers = [
            api(live).completions.create(
                model="tiny", prompt=p, max_tokens=24, extra_body={"speculate": False}
            )
            for p in PROMPTS
        ]
    assert [a.choices[0].text for a in answers] == [
        greedy(reference, p, 24)[1].text for p in PROMPTS
    ]
    assert all(a.model_extra["adaspec"]["target_forwards"] == 24 for a in answers)
    assert all(a.model_extra["adaspec"]["drafted"] == 0 for a in answers)


def test_openai_client_streams(server, reference):
    _, expected = greedy(reference, "", 12, chat=True)
    stream = api(server).chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=12, stream=True
    )
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts) == expected.text


def test_same_seed_same_text_other_seed_other_text(server):
    def sample(seed: int) -> str:
        got = api(server).completions.create(
            model="tiny", prompt=PROMPTS[2], max_tokens=24, temperature=1.0, seed=seed
        )
        return got.choices[0].text

    first = sample(5)
    assert sample(5) == first
    assert sample(6) != first


def test_top_k_one_is_greedy(server, reference):
    _, expected = greedy(reference, PROMPTS[3], 12)
    got = api(server).completions.create(
        model="tiny", prompt=PROMPTS[3], max_tokens=12, temperature=1.0, extra_body={"top_k": 1}
    )
    assert got.choices[0].text == expected.text


def test_parallel_requests_from_threads(server, reference):
    expected = [greedy(reference, p, 12)[1].text for p in PROMPTS]
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        with client(server) as http:
            body = {"prompt": PROMPTS[i], "max_tokens": 12}
            got[i] = http.post("/v1/completions", json=body).json()["choices"][0]["text"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [got.get(i) for i in range(len(PROMPTS))] == expected


def test_requests_run_side_by_side_in_slots(model_dir, reference, slow_steps):
    """With two slots, two requests are in flight at once (both slots busy), and each
    answer is plain decoding's."""
    engine = load(str(model_dir), backend="torch", drafter="none", slots=2)
    expected = [greedy(reference, p, 30)[1].text for p in PROMPTS[:2]]
    busy: list[float] = []
    with live_server(engine, parallel=2) as live, client(live) as http:

        def read(prompt: str) -> str:
            body = {"prompt": prompt, "max_tokens": 30, "stream": True}
            with http.stream("POST", "/v1/completions", json=body) as response:
                chunks = events(response)
            return "".join(c["choices"][0]["text"] for c in chunks)

        with ThreadPoolExecutor(2) as pool:
            answers = pool.map(read, PROMPTS[:2])
            while len(busy) < 2 or busy[-1] > 0:
                busy.append(scrape(live)["adaspec_slots_busy"])
            assert list(answers) == expected
    assert max(busy) == 2


def test_every_model_call_runs_on_the_thread_that_loaded_the_models(model_dir, monkeypatch):
    """Load, warm-up and requests on one thread: OpenMP keeps a pool per calling thread,
    and pools that outnumber the cores sleep at each barrier (ModelThread says why)."""
    callers: set[int] = set()
    backend = type(load(str(model_dir), backend="torch", drafter="none").target)
    for name in ("prefill", "forward", "score_prompt", "forward_slots"):
        original = getattr(backend, name)

        def traced(*args, _original=original, **kwargs):
            callers.add(threading.get_ident())
            return _original(*args, **kwargs)

        monkeypatch.setattr(backend, name, traced)
    thread = ModelThread()
    engine = load_engine(
        EngineSpec(target=str(model_dir), backend="torch", drafter="ngram"), thread
    )
    live = LiveServer(engine, ServerSettings(model_id="tiny"), thread)
    live.start()
    try:
        with client(live) as http:
            body = {"prompt": PROMPTS[0], "max_tokens": 8}
            assert http.post("/v1/completions", json=body).status_code == 200
    finally:
        live.stop()
    assert len(callers) == 1 and threading.get_ident() not in callers


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text(server, reference, stream):
    text = greedy(reference, PROMPTS[0], 30)[1].text
    stop = text[12:15]
    expected = text[: text.index(stop)]
    got = api(server).completions.create(
        model="tiny", prompt=PROMPTS[0], max_tokens=30, stop=["never there", stop], stream=stream
    )
    if stream:
        chunks = list(got)
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        assert got.choices[0].text == expected
        assert got.choices[0].finish_reason == "stop"
        assert 0 < got.usage.completion_tokens <= 30


def test_context_exceeded_names_both_numbers(server):
    for stream in (False, True):
        body = {"prompt": PROMPTS[0], "max_tokens": 500, "stream": stream}
        response = httpx.post(f"{server.url}/v1/completions", json=body)
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "500" in message and "128" in message, message


def test_disconnect_cancels_and_frees_the_slot(server, slow_steps):
    before = scrape(server)
    with client(server) as http:
        body = {"prompt": PROMPTS[0], "max_tokens": LONG, "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            while not next(lines).startswith("data: "):
                pass
        started = time.monotonic()  # the connection is closed: the request is cancelled
        answer = http.post("/v1/completions", json={"prompt": PROMPTS[1], "max_tokens": 3})
    assert answer.status_code == 200
    assert time.monotonic() - started < LONG * 0.02 / 2  # it did not wait for the first
    deadline = time.monotonic() + 5
    while scrape(server)["adaspec_requests_cancelled_total"] == before.get(
        "adaspec_requests_cancelled_total", 0
    ):
        assert time.monotonic() < deadline, "the disconnect was not counted as a cancel"
        time.sleep(0.02)
    after = scrape(server)
    assert after["adaspec_slots_busy"] == 0 and after["adaspec_queue_depth"] == 0
    generated = after["adaspec_completion_tokens_total"] - before["adaspec_completion_tokens_total"]
    assert generated < LONG + 3


def test_metrics_count_requests_tokens_and_no_drafts(server):
    before = scrape(server)
    with client(server) as http:
        usages = [
            http.post("/v1/completions", json={"prompt": p, "max_tokens": 6}).json()["usage"]
            for p in PROMPTS[:2]
        ]
        assert http.post("/v1/completions", json={"prompt": "x", "n": 3}).status_code == 400
    after = scrape(server)

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew("adaspec_requests_total{endpoint=/v1/completions,status=200}") == 2
    assert grew("adaspec_requests_total{endpoint=/v1/completions,status=400}") == 1
    assert grew("adaspec_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert grew("adaspec_completion_tokens_total") == sum(u["completion_tokens"] for u in usages)
    assert grew("adaspec_time_to_first_token_seconds_count") == 2
    assert after["adaspec_draft_tokens_total"] == after["adaspec_accepted_tokens_total"] == 0
    assert after["adaspec_acceptance_rate"] == 0.0
    assert after["adaspec_slots"] == 1
    assert not any(math.isnan(v) for v in after.values())


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("model", {"drafter": "model", "policy": "fixed", "k": 3}),  # drafts for itself
        ("ngram", {"drafter": "ngram", "policy": "fixed", "k": 3}),
        ("auto", {"drafter": "auto", "policy": "goodput"}),
    ],
)
def test_speculation_gives_plain_decoding_text(model_dir, reference, method, options):
    if method == "model":
        options = options | {"draft": str(model_dir)}
    engine = load(str(model_dir), backend="torch", **options)
    with live_server(engine) as live:
        answers = [
            api(live).completions.create(model="tiny", prompt=p, max_tokens=24) for p in PROMPTS
        ]
        metrics = scrape(live)
    assert [a.choices[0].text for a in answers] == [
        greedy(reference, p, 24)[1].text for p in PROMPTS
    ]
    drafted = sum(a.model_extra["adaspec"]["drafted"] for a in answers)
    accepted = sum(a.model_extra["adaspec"]["accepted"] for a in answers)
    assert metrics["adaspec_draft_tokens_total"] == drafted
    assert metrics["adaspec_accepted_tokens_total"] == accepted <= drafted
    assert 0.0 <= metrics["adaspec_acceptance_rate"] <= 1.0
    if method == "model":
        assert accepted > 0 and set(answers[0].model_extra["adaspec"]["drafters"]) == {"model"}


def test_api_keys(model_dir):
    engine = load(str(model_dir), backend="torch", drafter="none")
    with live_server(engine, api_keys=("k1", "k2")) as live, client(live) as http:
        body = {"prompt": "x", "max_tokens": 2}
        refused = http.post("/v1/completions", json=body)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        wrong = http.post("/v1/completions", json=body, headers={"Authorization": "Bearer k3"})
        assert wrong.status_code == 401
        assert http.post("/v1/completions", content=b"{bad").status_code == 401
        bearer = http.post("/v1/completions", json=body, headers={"Authorization": "Bearer k1"})
        assert bearer.status_code == 200
        assert http.get("/v1/models", headers={"X-Api-Key": "k2"}).status_code == 200
        assert http.get("/health").status_code == 200
        assert http.get("/metrics").status_code == 200
        assert api(live, "k2").completions.create(model="tiny", prompt="x", max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            api(live, "nope").models.list()


CHAT_OK = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
MALFORMED = [
    # (path, body or raw bytes, status, param)
    ("chat", b"{bad json", 400, None),
    ("chat", [1, 2], 400, None),
    ("chat", {}, 400, "messages"),
    ("chat", {"messages": []}, 400, "messages"),
    ("chat", {"messages": "hi"}, 400, "messages"),
    ("chat", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ("chat", {"messages": [{"content": "x"}]}, 400, "messages.0.role"),
    ("chat", CHAT_OK | {"model": "gpt-4o"}, 404, "model"),
    ("chat", CHAT_OK | {"max_tokens": 0}, 400, "max_tokens"),
    ("chat", CHAT_OK | {"max_tokens": "ten"}, 400, "max_tokens"),
    ("chat", CHAT_OK | {"max_completion_tokens": -1}, 400, "max_completion_tokens"),
    ("chat", CHAT_OK | {"temperature": 2.5}, 400, "temperature"),
    ("chat", CHAT_OK | {"temperature": -0.1}, 400, "temperature"),
    ("chat", CHAT_OK | {"top_p": 0}, 400, "top_p"),
    ("chat", CHAT_OK | {"top_p": 1.5}, 400, "top_p"),
    ("chat", CHAT_OK | {"top_k": -1}, 400, "top_k"),
    ("chat", CHAT_OK | {"n": 2}, 400, "n"),
    ("chat", CHAT_OK | {"stop": 5}, 400, "stop"),
    ("chat", CHAT_OK | {"stream": "maybe"}, 400, "stream"),
    ("chat", CHAT_OK | {"seed": "x"}, 400, "seed"),
    ("text", {}, 400, "prompt"),
    ("text", {"prompt": ""}, 400, None),
    ("text", {"prompt": 12}, 400, "prompt"),
    ("text", {"prompt": [10**6]}, 400, "prompt"),
    ("text", {"prompt": "x" * 70_000}, 413, None),
]


@pytest.mark.parametrize(("kind", "body", "status", "param"), MALFORMED)
def test_malformed_requests_get_openai_errors(server, kind, body, status, param):
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    with client(server) as http:
        if isinstance(body, bytes):
            response = http.post(path, content=body, headers={"content-type": "application/json"})
        else:
            response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_a_failing_request_fails_alone(server, monkeypatch):
    """A request the engine fails on (here: a scheduler that fails one prompt) answers its
    own error, whole or streamed; the next request is served as before."""
    scheduler = server.state.scheduler
    submit = scheduler.submit
    failures = {"bug": RuntimeError("boom"), "user": ModelError("the model cannot do that")}

    def failing(prompt, config, on_event):
        text = server.state.tokenizer.decode(prompt)
        if text not in failures:
            return submit(prompt, config, on_event)
        ticket = Ticket("failing", prompt, config, on_event)
        threading.Thread(target=on_event, args=(Failed(failures[text]),)).start()
        return ticket

    monkeypatch.setattr(scheduler, "submit", failing)
    with client(server) as http:
        bug = http.post("/v1/completions", json={"prompt": "bug", "max_tokens": 2})
        user = http.post("/v1/completions", json={"prompt": "user", "max_tokens": 2})
        body = {"prompt": "bug", "max_tokens": 2, "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line]
        after = http.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 2})
    assert bug.status_code == 500 and bug.json()["error"]["type"] == "internal_error"
    assert "boom" not in bug.text  # a bug's details go to the log only
    assert user.status_code == 400 and "cannot do that" in user.json()["error"]["message"]
    assert json.loads(lines[0].removeprefix("data: "))["error"]["type"] == "internal_error"
    assert lines[-1] == "data: [DONE]"
    assert after.status_code == 200


def test_unknown_paths_and_methods_get_openai_errors(server):
    with client(server) as http:
        missing = http.get("/v1/nothing")
        wrong_method = http.get("/v1/chat/completions")
    assert missing.status_code == 404 and "error" in missing.json()
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_full_queue_answers_429_with_retry_after(model_dir, slow_steps):
    engine = load(str(model_dir), backend="torch", drafter="none")
    with live_server(engine, max_queue=0) as live, client(live) as http:
        body = {"prompt": PROMPTS[0], "max_tokens": LONG, "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as running:
            lines = running.iter_lines()
            while not next(lines).startswith("data: "):
                pass  # the first token came: the one slot is busy
            refused = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert refused.status_code == 429
            assert refused.headers["retry-after"].isdigit()
            assert refused.json()["error"]["type"] == "rate_limit_error"
            with pytest.raises(openai.RateLimitError):
                api(live).completions.create(model="tiny", prompt="x", max_tokens=2)


def test_health_is_503_while_warming_up(model_dir, monkeypatch):
    original = EventBridge.on_event

    def late(self, event):  # the warm-up's 8 steps take 2 s
        time.sleep(0.25 if isinstance(event, Step) else 0)
        original(self, event)

    monkeypatch.setattr(EventBridge, "on_event", late)
    engine = load(str(model_dir), backend="torch", drafter="none")
    with live_server(engine, ready=False) as live, client(live) as http:
        health = http.get("/health")
        early = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert (health.status_code, health.json()) == (503, {"status": "loading"})
        assert early.status_code == 503 and early.json()["error"]["code"] == "loading"
        deadline = time.monotonic() + 10
        while http.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_stopping_finishes_the_requests_in_flight(model_dir, slow_steps):
    engine = load(str(model_dir), backend="torch", drafter="none")
    live = LiveServer(engine, ServerSettings(model_id="tiny"))
    live.start()
    with client(live) as http:
        body = {"prompt": PROMPTS[0], "max_tokens": 40, "stream": True}
        body["stream_options"] = {"include_usage": True}
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            live.server.should_exit = True  # as SIGTERM does
            rest = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert rest[-1]["usage"]["completion_tokens"] == 40
    live.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{live.url}/health")


def test_a_failed_warm_up_stops_the_server(model_dir):
    """A model that cannot run the warm-up (a context of 8 tokens) is never announced: the
    server stops and `adaspec serve` exits 1 with why."""
    engine = load(str(model_dir), backend="torch", drafter="none", context=8)
    announced: list[str] = []
    with pytest.raises(ModelError, match="warm-up failed: prompt"):
        serve(engine, ServerSettings(model_id="tiny", port=0), announced.append)
    assert announced == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command(model_dir, tmp_path):
    """`adaspec serve` as a user runs it: it prints its URL when ready, answers, and on
    SIGTERM finishes the request in flight and exits 0."""
    port = _free_port()
    command = [sys.executable, "-m", "adaspec.cli", "serve", "--target", str(model_dir)]
    command += ["--backend", "torch", "--port", str(port), "--threads", "1", "--api-key", "s"]
    command += ["--parallel", "2"]
    env = os.environ | {"ADASPEC_CACHE": str(tmp_path / "cache")}
    with open(tmp_path / "stderr", "w") as errors:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
        assert f"http://127.0.0.1:{port}/v1" in lines.get(timeout=90)
        base = f"http://127.0.0.1:{port}"
        chat = openai.OpenAI(base_url=f"{base}/v1", api_key="s", max_retries=0)
        model = chat.models.list().data[0].id
        assert model == str(model_dir)
        answer = chat.chat.completions.create(model=model, messages=CHAT, max_tokens=5)
        assert answer.usage.completion_tokens == 5
        body = {"prompt": PROMPTS[0], "max_tokens": LONG, "stream": True}
        headers = {"Authorization": "Bearer s"}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, headers=headers) as r:
            lines_in = r.iter_lines()
            while not next(lines_in).startswith("data: "):
                pass
            proc.send_signal(signal.SIGTERM)
            assert [x for x in lines_in if x][-1] == "data: [DONE]"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    log = (tmp_path / "stderr").read_text()
    requests = [line for line in log.splitlines() if line.startswith(("chatcmpl-", "cmpl-"))]
    assert len(requests) == 2 and "Traceback" not in log, log


def test_serve_command_refuses_a_busy_port_before_loading(tmp_path):
    from typer.testing import CliRunner

    from adaspec.cli import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        missing = str(tmp_path / "no-model")  # never loaded: the port is checked first
        result = CliRunner().invoke(app, ["serve", "--target", missing, "--port", port])
    assert result.exit_code == 1 and "cannot listen on 127.0.0.1" in result.output
    result = CliRunner().invoke(app, ["serve", "--target", missing, "--parallel", "0"])
    assert result.exit_code == 1 and "--parallel must be at least 1" in result.output


def test_a_whole_answer_is_cancelled_when_its_client_leaves(server, slow_steps):
    """Not streamed: the server notices the closed connection while the answer runs."""
    before = scrape(server)
    body = {"prompt": PROMPTS[0], "max_tokens": LONG}
    with (
        httpx.Client(base_url=server.url, timeout=0.3) as http,
        pytest.raises(httpx.ReadTimeout),
    ):  # the client gives up and closes
        http.post("/v1/completions", json=body)
    cancelled = "adaspec_requests_cancelled_total"
    gone = "adaspec_requests_total{endpoint=/v1/completions,status=499}"
    deadline = time.monotonic() + 5
    while (after := scrape(server))[cancelled] == before.get(cancelled, 0) or after.get(
        gone, 0
    ) == before.get(gone, 0):
        assert time.monotonic() < deadline, "the closed connection was not counted as a cancel"
        time.sleep(0.02)
    assert after["adaspec_slots_busy"] == 0 and after["adaspec_queue_depth"] == 0
    generated = after["adaspec_completion_tokens_total"] - before["adaspec_completion_tokens_total"]
    assert generated < LONG
