"""The bench harness end to end on tiny models and a 3-question file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from adaspec.bench import peers as peer_factories
from adaspec.bench import report
from adaspec.bench.harness import BenchOptions, run_bench
from adaspec.bench.methods import AdaspecMethod, Run, method_window
from adaspec.bench.questions import load_questions, select
from adaspec.cli import app
from adaspec.errors import ConfigError
from tests.tiny import backend, tiny_model

QUESTIONS = [
    {"question_id": 1, "category": "coding", "turns": ["def add(a, b):", "more"]},
    {"question_id": 2, "category": "qa", "turns": ["The quick brown fox jumps over"]},
    {"question_id": 3, "category": "summarization", "turns": ["Summarize the following article."]},
]


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in QUESTIONS))
    return path


def options(questions, model_dir, draft_dir, out, **kw) -> BenchOptions:
    base = dict(
        questions=questions,
        target=str(model_dir),
        draft=str(draft_dir),
        methods=["none", "ngram:heuristic", "model:fixed"],
        max_new_tokens=12,
        repeats=2,
        out=out,
    )
    return BenchOptions(**{**base, **kw})


def test_bench_end_to_end(questions, model_dir, draft_dir, tmp_path):
    out = tmp_path / "bench"
    outcome = run_bench(options(questions, model_dir, draft_dir, out))
    assert outcome.problems == []
    for name in ("report.md", "results.json", "speedup.png", "accepted.png", "runs.jsonl"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in results["runs"]}
    assert {"none", "ngram:heuristic", "model:fixed", "transformers"} <= methods
    assert len(results["runs"]) == 3 * 2 * len(methods)  # questions x repeats x methods
    in_order = [json.loads(line)["method"] for line in (out / "runs.jsonl").open()]
    ours = [m for m in in_order if not m.startswith("transformers")]
    assert in_order[: len(ours)] == ours  # the peers' models load only after adaspec's runs
    for block in (ours, in_order[len(ours) :]):
        width = len(set(block))
        firsts = block[::width]  # the method that opened each round
        assert len(set(firsts)) == width  # no method always goes first
    assert results["meta"]["versions"]["torch"]
    text = (out / "report.md").read_text()
    assert "| model:fixed |" in text and "summarization" in text
    assert "Every adaspec method produced exactly the token ids" in text


def test_peers_run_on_the_targets_device_and_dtype(
    questions, model_dir, draft_dir, tmp_path, monkeypatch
):
    """A peer on another device or dtype than adaspec would measure the hardware, not the
    method (on a GPU machine the transformers peers once ran on the CPU)."""
    real, seen = peer_factories.transformers_peers, {}

    def spy(target_folder, draft_folder, device, dtype):
        seen.update(device=torch.device(device), dtype=dtype)
        return real(target_folder, draft_folder, device, dtype)

    monkeypatch.setattr(peer_factories, "transformers_peers", spy)
    out = tmp_path / "bench"
    opts = options(questions, model_dir, draft_dir, out, methods=["none"], dtype="bfloat16")
    outcome = run_bench(replace(opts, max_new_tokens=4, repeats=1))
    assert seen == {"device": torch.device("cpu"), "dtype": torch.bfloat16}
    results = json.loads((out / "results.json").read_text())
    assert "transformers" in {r["method"] for r in results["runs"]}
    assert results["meta"]["device"] == "cpu"
    assert outcome.problems == []


def test_resume_skips_finished_runs(questions, model_dir, draft_dir, tmp_path):
    out = tmp_path / "bench"
    run_bench(options(questions, model_dir, draft_dir, out, peers=False, repeats=1))
    lines = (out / "runs.jsonl").read_text().splitlines()
    (out / "runs.jsonl").write_text("\n".join(lines[:4]) + "\n")  # an interrupted run
    ticks = []
    run_bench(
        options(questions, model_dir, draft_dir, out, peers=False, repeats=1, resume=True),
        ticks.append,
    )
    assert ticks[0].total == len(lines) - 4
    assert len((out / "runs.jsonl").read_text().splitlines()) == len(lines)


def test_correctness_check_catches_a_wrong_method(
    questions, model_dir, draft_dir, tmp_path, monkeypatch
):
    real_run = AdaspecMethod.run

    def corrupted(self, prompt, max_new):
        fields = real_run(self, prompt, max_new)
        if self.name == "ngram:heuristic":
            fields["token_ids"] = fields["token_ids"][:-1]  # a truncated output
        return fields

    monkeypatch.setattr(AdaspecMethod, "run", corrupted)
    args = [
        "bench",
        "--questions",
        str(questions),
        "--target",
        str(model_dir),
        "--draft",
        str(draft_dir),
        "--methods",
        "ngram:heuristic",
        "--max-new-tokens",
        "8",
        "--no-peers",
        "--out",
        str(tmp_path / "b"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "differ from plain decoding" in result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert progress and all("tok/s" in line for line in progress)  # one per finished run
    assert any("ngram:heuristic q" in line for line in progress)
    assert "FAILED" in (tmp_path / "b" / "report.md").read_text()


def test_mismatch_names_the_first_differing_token():
    def run(method, ids):
        return Run(method, 7, "qa", 0, len(ids), 1.0, token_ids=ids)

    problems = report.mismatches(
        [run("none", [1, 2, 3]), run("x", [1, 2, 4]), run("y", [1, 2, 3])], "none"
    )
    assert problems == ["x on question 7 (repeat 0): differs from none at token 2 (3 vs 3 tokens)"]


def test_decode_only_speedup_leaves_the_prefill_out():
    def run(method, wall, prefill, category="qa"):
        return Run(method, 7, category, 0, 11, wall, prefill_s=prefill)

    runs = [run("none", 12.0, 2.0), run("fast", 7.0, 2.0), run("transformers", 6.0, None)]
    cells = report.table(runs)
    assert cells["none"]["qa"].decode_tokens_per_s == pytest.approx(10 / 10.0)
    assert cells["fast"]["qa"].decode_tokens_per_s == pytest.approx(10 / 5.0)
    assert cells["transformers"]["qa"].decode_tokens_per_s is None  # peers: no prefill known
    text = report.markdown(cells, "none", ["transformers"], [], "# bench")
    decode = text.split("## Decode only")[1].split("##")[0]
    assert "| fast | 2.00× | 2.00× |" in decode and "transformers" not in decode


def test_question_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:1"):
        load_questions(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_questions(tmp_path / "missing.jsonl")


def test_select_per_category(questions):
    chosen = select(load_questions(questions), ["qa", "coding"], 1)
    assert [q.question_id for q in chosen] == [2, 1]
    with pytest.raises(ConfigError, match="unknown categories"):
        select(load_questions(questions), ["poetry"], 1)


def test_shipped_spec_bench_questions():
    from adaspec.bench.questions import default_questions_path

    questions = load_questions(default_questions_path())
    assert len(questions) == 480
    assert len(select(questions, None, 2)) == 26  # 13 categories


def test_the_agentic_workload_is_shipped_by_name():
    """Three sessions of one repeated task each (what the suffix drafter is for), and one
    file's three lengths (long contexts)."""
    from pathlib import Path

    from adaspec.bench.questions import shipped_workloads

    assert shipped_workloads() == ["agentic", "long"]
    questions = load_questions(Path("agentic"))
    assert [q.category for q in questions[::8]] == ["sql", "tools", "edit"]
    assert len(questions) == 24 and all("```" in q.prompt for q in questions[::16])
    lengths = [len(q.prompt) for q in load_questions(Path("long"))[::3]]
    assert lengths == sorted(lengths) and lengths[-1] > 3.5 * lengths[0]  # 4k, 8k, 16k
    with pytest.raises(ConfigError, match="or a shipped one: agentic, long"):
        load_questions(Path("agentik"))


def test_auto_gets_the_draft_model_as_an_arm_and_ngram_does_not():
    """As `adaspec generate` runs auto with the default pair, the bench's auto has the
    draft model as an arm; a model-free method is measured without it."""
    target, draft = backend(tiny_model(seed=0)), backend(tiny_model(seed=3))
    auto = AdaspecMethod("auto:goodput", target, draft).engine.drafter
    assert set(auto.arms) == {"ngram", "suffix", "recycling", "aded", "model", "model-tree"}
    assert set(AdaspecMethod("auto", target, None).engine.drafters.arms) == {
        "ngram",
        "suffix",
        "recycling",
        "aded",
    }
    assert AdaspecMethod.uses_draft("auto:goodput") and not AdaspecMethod.uses_draft("ngram")


def test_a_cell_that_drafted_nothing_is_marked_as_plain_decoding():
    """A method that verified no draft in a category did the baseline's work there: the
    report says so, rather than let its 0.96× read as a loss or its 1.04× as a gain."""

    def run(method, category, drafted, draft_s=0.0, wall=10.0):
        return Run(
            method, category, category, 0, 10, wall, drafted=drafted, accepted=0, draft_s=draft_s
        )

    runs = [
        run("none", "qa", 0),
        run("none", "coding", 0),
        run("auto", "qa", 0, draft_s=0.01, wall=10.4),  # lookups that found nothing
        run("auto", "coding", 6, draft_s=0.01, wall=6.0),
        run("model", "qa", 0, draft_s=2.0),  # drafted and trimmed all: not the same work
        run("model", "coding", 3, draft_s=2.0),
    ]
    text = report.markdown(report.table(runs), "none", [], [], "# bench")
    speedup = text.split("## Speedup")[1].split("##")[0]
    assert "| auto | 0.96×° | 1.67× |" in speedup
    assert "| model | 1.00× | 1.00× |" in speedup
    assert "| none | 1.00× | 1.00× |" in speedup  # the baseline is not marked
    assert "°: the method verified no draft" in speedup


def test_the_baselines_repeats_measure_the_noise_on_identical_work():
    def run(question, repeat, wall):
        return Run("none", question, "qa", repeat, 10, wall)

    runs = [run(1, 0, 10.0), run(1, 1, 11.0), run(2, 0, 5.0), run(2, 1, 6.0), run(3, 0, 4.0)]
    median, largest, n = report.repeat_noise(runs, "none")
    assert n == 2  # question 3 ran once: it says nothing of noise
    assert largest == pytest.approx(0.2) and median == pytest.approx((0.1 + 0.2) / 2)
    assert report.repeat_noise(runs[:1], "none") is None
    cells = report.table(runs)
    text = report.markdown(cells, "none", [], [], "# bench", (median, largest, n))
    assert "differed by a median 15% in tokens/s (at most 20%, over 2 questions)" in text


def test_a_method_may_name_its_draft_window():
    assert AdaspecMethod.names("model:fixed@window=512") == ("model", "fixed")
    assert method_window("model:fixed@window=512", 0) == 512
    assert method_window("model", 64) == 64
    for bad in ("model@window=", "model@size=3", "model@window=-1"):
        with pytest.raises(ConfigError, match="window=TOKENS"):
            AdaspecMethod.parse(bad)
