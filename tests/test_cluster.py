"""``adaspec serve --replicas N`` on Ray Serve: the gateway's rules on fake replicas (no Ray),
then a real local cluster of two replicas of a tiny model, driven by the official client,
with one replica killed by its pid mid-load. The real cluster's tests are marked
``cluster``; they need the [cluster] extra and take about a minute."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from adaspec.api import load
from adaspec.errors import ConfigError
from adaspec.models import DEFAULT_DRAFT, DEFAULT_TARGET, NAMED_MODELS, model_path
from adaspec.server.affinity import conversation_keys, home_is_free
from adaspec.server.cluster import ClusterSettings
from adaspec.server.cluster_gateway import Forwarded, Replicas, create_gateway, merge_metrics
from adaspec.server.metrics import Metrics
from adaspec.stats import GenerationStats
from tests.tiny import make_tokenizer, tiny_model


class Lost(Exception):
    """What a fake cluster raises for a replica that died."""


def fake_replicas(answers: list[list], ready: int = 2) -> Replicas:
    """Each call takes the next script: its parts in order; an exception part is raised."""
    calls = iter(answers)

    async def forward(request: Forwarded) -> AsyncIterator[dict]:
        for part in next(calls):
            if isinstance(part, Exception):
                raise part
            yield part

    async def count() -> int:
        return ready

    async def metrics() -> dict[str, str]:
        return {}

    return Replicas(forward, count, metrics, lambda e: isinstance(e, Lost), attempts=3)


JSON = {"status": 200, "headers": [(b"content-type", b"application/json")]}
SSE = {"status": 200, "headers": [(b"content-type", b"text/event-stream")]}


def post(replicas: Replicas, body: dict) -> httpx.Response:
    with TestClient(create_gateway(replicas)) as client:
        return client.post("/v1/completions", json=body)


def test_a_replica_lost_before_it_answered_costs_a_retry_only():
    replicas = fake_replicas([[Lost()], [JSON, Lost()], [JSON, {"body": b'{"ok": 1}'}]])
    answer = post(replicas, {"prompt": "x"})
    assert answer.status_code == 200 and answer.json() == {"ok": 1}


def test_no_replica_left_is_a_503_in_openais_shape():
    answer = post(fake_replicas([[Lost()]] * 3), {"prompt": "x"})
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "replica_lost"


def test_a_stream_whose_replica_is_lost_ends_with_an_error_event():
    script = [SSE, {"body": b'data: {"n": 1}\n\n'}, {"body": b'data: {"n": 2}\n\n'}, Lost()]
    answer = post(fake_replicas([script]), {"prompt": "x", "stream": True})
    events = [line for line in answer.text.splitlines() if line]
    assert events[:2] == ['data: {"n": 1}', 'data: {"n": 2}'] and events[-1] == "data: [DONE]"
    assert json.loads(events[2].removeprefix("data: "))["error"]["code"] == "replica_lost"


def test_other_failures_are_not_retried():
    with pytest.raises(ValueError):
        post(fake_replicas([[ValueError("a bug")], [JSON, {"body": b"{}"}]]), {"prompt": "x"})


def test_health_counts_ready_replicas():
    with TestClient(create_gateway(fake_replicas([], ready=2))) as client:
        assert client.get("/health").json() == {"status": "ok", "replicas": 2}
    with TestClient(create_gateway(fake_replicas([], ready=0))) as client:
        loading = client.get("/health")
    assert loading.status_code == 503 and loading.json()["replicas"] == 0


def test_metrics_of_replicas_are_one_text_labelled_by_replica():
    texts = {}
    for name, tokens in (("a", 3), ("b", 5)):
        metrics = Metrics(busy=lambda: 0, queued=lambda: 0, slots=lambda: 1)
        metrics.record(GenerationStats(prompt_tokens=2), 0, cancelled=False)
        metrics.completion_tokens.inc(tokens)
        texts[name] = metrics.exposition()[0].decode()
    merged = text_string_to_metric_families(merge_metrics(texts))
    samples = {(s.name, s.labels.get("replica")): s.value for f in merged for s in f.samples}
    assert samples[("adaspec_completion_tokens_total", "a")] == 3
    assert samples[("adaspec_completion_tokens_total", "b")] == 5
    assert samples[("adaspec_replicas_reporting", None)] == 2


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"replicas": 0}, "--replicas"),
        ({"min_replicas": 1}, "both"),
        ({"min_replicas": 3, "max_replicas": 2}, "at most"),
        ({"routing": "random"}, "--routing"),
    ],
)
def test_bad_cluster_settings(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ClusterSettings(**options)


def test_deployment_options():
    fixed = ClusterSettings(replicas=2, routing="load").deployment_options(parallel=4)
    assert "request_router_config" not in fixed
    assert fixed["num_replicas"] == 2 and fixed["ray_actor_options"]["num_cpus"] == 1.0
    scaled = ClusterSettings(min_replicas=1, max_replicas=3).deployment_options(4)
    assert scaled["autoscaling_config"]["target_ongoing_requests"] == 4
    assert "num_replicas" not in scaled


def test_replicas_without_ray_say_what_to_install(monkeypatch, model_dir):
    from typer.testing import CliRunner

    from adaspec.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    result = CliRunner().invoke(app, ["serve", "--target", str(model_dir), "--replicas", "2"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "[cluster]" in lines[0], result.output


# A real local cluster: two replicas of a model slow enough (about 10 ms a token) that a
# request is still running when its replica is killed.
PORT_WAIT_S = 240
LONG = 500


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slow-model")
    tokenizer = make_tokenizer(vocab_size=300)
    model = tiny_model(vocab=len(tokenizer), hidden=256, layers=8)
    model.config.max_position_embeddings = 1024
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def descendants(pid: int) -> set[int]:
    """Every process under ``pid``, by /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def replica_pids(under: int) -> list[int]:
    pids = []
    for pid in descendants(under):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if command.startswith(b"ray::ServeReplica:adaspec"):  # its title, whatever it runs
            pids.append(pid)
    return sorted(pids)


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


class Cluster:
    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process, self.url = process, url
        self.seen: set[int] = set()

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=60)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=60).json()


@contextmanager
def serving_replicas(*args: str) -> Iterator[Cluster]:
    """``adaspec serve --replicas 2 ARGS`` as a user runs it; at the end SIGTERM, a clean
    exit, and none of the processes it started (Ray's included) left."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "adaspec"), "serve", "--replicas", "2"]
    command += ["--threads", "1", "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = Cluster(process, f"http://127.0.0.1:{port}")
    ready = threading.Event()
    threading.Thread(target=lambda: (process.stdout.readline(), ready.set()), daemon=True).start()
    try:
        assert ready.wait(PORT_WAIT_S), "the cluster did not start"
        assert process.poll() is None, process.stderr.read()
        running.seen = descendants(process.pid)
        yield running
    finally:
        started = descendants(process.pid) | running.seen
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        finally:
            if process.poll() is None:
                process.kill()
        time.sleep(1.0)
        left = alive(started)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left behind: {sorted(left)}"
        assert process.returncode == 0, process.stderr.read()[-2000:]


@pytest.fixture(scope="module")
def cluster(slow_model) -> Iterator[Cluster]:
    pytest.importorskip("ray.serve", reason="the [cluster] extra is not installed")
    options = ["--target", str(slow_model), "--backend", "torch"]
    with serving_replicas(*options, "--drafter", "ngram", "--policy", "fixed", "--k", "3") as c:
        yield c


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PROMPTS = ["def reverse(head):", "The quick brown fox", "Summarize the following", "models run"]


@pytest.mark.cluster
def test_the_openai_client_gets_greedy_answers_through_the_cluster(cluster, slow_model):
    assert cluster.health() == {"status": "ok", "replicas": 2}
    reference = load(str(slow_model), backend="torch", drafter="none")
    answers = [
        cluster.client().completions.create(model=slow_model.name, prompt=p, max_tokens=24)
        for p in PROMPTS
    ]
    expected = [reference.generate(p, max_new_tokens=24).text for p in PROMPTS]
    assert [a.choices[0].text for a in answers] == expected
    chunks = cluster.client().chat.completions.create(
        model=slow_model.name,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        stream=True,
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content is not None) > 0
    page = httpx.get(f"{cluster.url}/", timeout=60)
    assert page.status_code == 200 and "<title>adaspec chat</title>" in page.text
    metrics = httpx.get(f"{cluster.url}/metrics", timeout=60).text
    assert "adaspec_replicas_reporting" in metrics and 'replica="' in metrics


@pytest.mark.cluster
def test_a_killed_replica_costs_only_its_requests(cluster, slow_model):
    body = {"model": slow_model.name, "max_tokens": LONG, "stream": True}
    outcomes: dict[int, tuple] = {}

    def stream(i: int) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{cluster.url}/v1/completions",
                json=body | {"prompt": f"request {i}"},
                timeout=60,
            ) as response:
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            outcomes[i] = (response.status_code, lines)
        except Exception as error:
            outcomes[i] = ("exception", repr(error))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    victims = replica_pids(cluster.process.pid)
    assert len(victims) == 2, victims
    os.kill(victims[0], signal.SIGKILL)
    for thread in threads:
        thread.join(90)
    assert all(not thread.is_alive() for thread in threads), "a client hung"
    ended = {"done": 0, "lost": 0}
    for status, lines in outcomes.values():
        assert status == 200 and lines[-1] == "data: [DONE]", (status, lines[-3:])
        last = json.loads(lines[-2].removeprefix("data: "))
        if "error" in last:
            assert last["error"]["code"] == "replica_lost"
            ended["lost"] += 1
        else:
            ended["done"] += 1
    assert ended["done"] >= 1, outcomes  # the other replica's requests finished
    after = cluster.client().completions.create(model=slow_model.name, prompt="x", max_tokens=4)
    assert after.choices[0].text is not None
    deadline = time.monotonic() + 60
    while cluster.health().get("replicas") != 2:
        assert time.monotonic() < deadline, "the lost replica was not replaced"
        time.sleep(1)
    cluster.seen |= descendants(cluster.process.pid)


def chat(*messages: str) -> Forwarded:
    turns = [{"role": ("user", "assistant")[i % 2], "content": m} for i, m in enumerate(messages)]
    body = json.dumps({"model": "m", "messages": turns}).encode()
    return Forwarded("POST", "/v1/chat/completions", "", [], body)


def test_a_turn_continues_the_conversation_of_its_messages_less_the_last_two():
    first = conversation_keys(chat("hi"))
    second = conversation_keys(chat("hi", "hello", "and then?"))
    third = conversation_keys(chat("hi", "hello", "and then?", "then this", "ok"))
    assert first[0] is None and second[0] == first[1] and third[0] == second[1]
    assert conversation_keys(chat("other", "x", "y"))[0] != first[1]
    completion = Forwarded("POST", "/v1/completions", "", [], b'{"prompt": "hi"}')
    assert conversation_keys(completion) == (None, None)
    assert conversation_keys(Forwarded("POST", "/v1/chat/completions", "", [], b"{")) == (
        None,
        None,
    )


@pytest.mark.parametrize(
    ("home", "others", "free"),
    [(None, [0, 1], True), (2, [0, 2], True), (3, [0, 3], False), (5, [None, None], True)],
)
def test_a_conversations_replica_takes_its_turn_unless_busier_than_the_slack(home, others, free):
    assert home_is_free(home, others, slack=2) is free


@pytest.mark.integration
def test_the_default_pair_on_two_replicas_answers_as_plain_decoding():
    """Two replicas of the default pair (llama.cpp, auto:goodput, a thread each) through
    the openai client: chat answers equal plain decoding's, whichever replica answers."""
    pytest.importorskip("ray.serve", reason="the [cluster] extra is not installed")
    if not model_path(NAMED_MODELS[DEFAULT_DRAFT]).is_file():
        pytest.skip("the default pair is not pulled; run `adaspec models pull`")
    prompts = ["Reverse a list in Python.", "What is a hash map?", "Write fizzbuzz in Python."]
    reference = load(DEFAULT_TARGET, drafter="none", threads=1, context=2048)
    expected = [reference.generate(p, chat=True, max_new_tokens=32).text for p in prompts]
    del reference
    with serving_replicas("--context", "2048") as running:
        assert running.health() == {"status": "ok", "replicas": 2}
        answers = [
            running.client().chat.completions.create(
                model=DEFAULT_TARGET,
                messages=[{"role": "user", "content": p}],
                max_tokens=32,
                temperature=0,
            )
            for p in prompts
        ]
    assert [a.choices[0].message.content for a in answers] == expected


def test_a_client_that_leaves_before_the_answer_cancels_it():
    from adaspec.server.cluster_gateway import unless_gone

    cancelled = []

    class Left:
        async def is_disconnected(self) -> bool:
            return True

    async def answering():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def run():
        response = await unless_gone(answering(), Left())
        await asyncio.sleep(0.01)  # the cancelled answer unwinds
        return response

    response = asyncio.run(run())
    assert response.status_code == 499 and cancelled == [True]
