"""Replay under load: recorded answers as many requests in flight, each pass charged once
by its total rows, and goodput's drafts as the batch grows."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from typer.testing import CliRunner

from adaspec.bench.replay import Case, replay
from adaspec.bench.replay_load import replay_load, speedups_under_load
from adaspec.cli import app
from adaspec.profile import CostProfile

KS = [1, 2, 4, 8, 16, 32, 64]
CURVES = {  # ms of a pass over each of KS rows
    "flat": [10.0, 10.2, 10.4, 10.8, 11.6, 13.0, 16.0],
    "torch-cpu": [300.0, 330.0, 400.0, 450.0, 700.0, 1200.0, 2200.0],
    "linear": [41.0 * k for k in KS],
}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADASPEC_CACHE", str(tmp_path / "cache"))


def curve(name: str) -> CostProfile:
    return CostProfile("tiny.gguf", "llama.cpp", 2, KS, [128], [CURVES[name]], [[0.0] * len(KS)])


def cases(n: int = 8, length: int = 24, seed: int = 0) -> list[Case]:
    """Answers that copy runs of their prompt between fresh tokens: n-grams pay on them."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(10, 500) for _ in range(40)]
        answer: list[int] = []
        while len(answer) < length:
            start = rng.randrange(0, 30)
            answer += prompt[start : start + rng.randrange(3, 9)]
            answer += [rng.randrange(500, 900) for _ in range(rng.randrange(1, 3))]
        out.append(Case(i, f"c{i % 2}", prompt, answer[:length]))
    return out


def test_one_at_a_time_costs_what_the_single_replay_does():
    work = cases()
    alone = sum(run.seconds for run in replay("none", work, curve("torch-cpu")))
    assert replay_load("none", work, curve("torch-cpu"), 1).seconds == pytest.approx(alone)


def test_a_pass_shared_by_every_request_is_charged_once_by_its_rows():
    work = cases(n=4)
    run = replay_load("none", work, curve("torch-cpu"), 4)
    # a request's first token comes from its prefill: then 23 passes over 4 rows each
    assert run.seconds == pytest.approx(23 * 0.400)
    assert run.tokens == 4 * 24 and run.drafted == 0 and run.steps == 4 * 24


@pytest.mark.parametrize("name", ["flat", "torch-cpu"])
def test_goodput_drafts_less_as_requests_are_added(name):
    """Drafts shrink from 1 to 8 requests, and at each step on torch-cpu. On the flat
    curve, where a row costs 0.1 ms from 2 rows to 64, they need not at each step: at 4
    requests they came out a little larger than alone (docs/benchmarks.md)."""
    levels = [1, 4, 8]
    runs = [replay_load("auto:goodput", cases(), curve(name), level) for level in levels]
    drafts = [run.draft_per_step for run in runs]
    assert drafts[-1] > 0 and drafts[0] > drafts[-1], drafts
    if name == "torch-cpu":
        assert all(a >= b for a, b in itertools.pairwise(drafts)), drafts


def test_goodput_never_drafts_where_every_row_costs_a_step():
    for level in (1, 4):
        assert replay_load("auto:goodput", cases(), curve("linear"), level).drafted == 0
    assert replay_load("ngram:fixed", cases(), curve("linear"), 4).drafted > 0  # control


def test_the_best_fixed_length_is_found_and_named():
    out = speedups_under_load(["auto:goodput"], cases(n=4), curve("flat"), [2])
    fixed = [name for name in out[2] if "@" in name]
    assert len(fixed) == 1 and fixed[0].split(":")[1].startswith("fixed@")
    assert out[2][fixed[0]].seconds <= out[2]["none"].seconds


def write_bench(folder, work: list[Case]) -> None:
    """A bench folder as `adaspec bench` writes it, for the replay command."""
    folder.mkdir()
    runs = [
        {"method": "none", "repeat": 0, "question_id": c.question_id, "category": c.category}
        | {"token_ids": c.answer}
        for c in work
    ]
    (folder / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs))
    (folder / "prompts.json").write_text(json.dumps({str(c.question_id): c.prompt for c in work}))


def test_replay_command_prints_speedups_by_concurrency(tmp_path):
    bench = tmp_path / "bench"
    write_bench(bench, cases(n=4))
    costs = curve("flat").save(tmp_path / "flat.json")
    args = ["replay", str(bench), "--profile", str(costs), "--methods", "auto:goodput"]
    result = CliRunner().invoke(app, [*args, "--concurrency", "1,2", "--json"])
    assert result.exit_code == 0, result.output
    ratios = json.loads(result.stdout)
    assert set(ratios) == {"1", "2"}
    assert all("auto:goodput" in by and any("@" in m for m in by) for by in ratios.values())
    table = CliRunner().invoke(app, [*args, "--concurrency", "2"])
    assert table.exit_code == 0 and "best fixed" in table.stdout
    bad = CliRunner().invoke(app, [*args, "--concurrency", "0,2"])
    assert bad.exit_code == 1 and "positive whole numbers" in bad.output
