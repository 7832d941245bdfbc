"""Replay: the real engine over recorded greedy answers, on a clock a cost profile drives."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from adaspec.bench import replay as replaying
from adaspec.bench.harness import BenchOptions, run_bench
from adaspec.bench.replay import (
    Case,
    ScriptedClock,
    ScriptedTarget,
    load_cases,
    replay,
    speedups,
)
from adaspec.cli import app
from adaspec.profile import CostProfile

PROMPT = list(range(10, 40))  # 30 distinct tokens
COPIED = Case(1, "coding", PROMPT, PROMPT[5:25])  # an answer that copies the prompt
FRESH = Case(2, "writing", PROMPT, list(range(50, 70)))  # an answer that never does


def profile(ms: list[float], model: str = "tiny.gguf") -> CostProfile:
    """Forward cost over 1, 2, 4, 8 positions, the same at every context."""
    return CostProfile(model, "llama.cpp", 2, [1, 2, 4, 8], [128], [ms], [[0.0] * 4])


GPU_LIKE = [10.0, 11.0, 12.0, 14.0]
LINEAR = [10.0, 20.0, 40.0, 80.0]  # k positions cost k steps: speculation cannot pay


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Policies look up saved cost profiles in the cache: keep the user's out of it."""
    monkeypatch.setenv("ADASPEC_CACHE", str(tmp_path / "cache"))


def test_scripted_target_answers_from_the_script_and_charges_the_profile():
    clock = ScriptedClock()
    target = ScriptedTarget(profile(GPU_LIKE), clock, vocab_size=100)
    target.play(Case(1, "qa", [1, 2], [3, 4, 5]))
    assert int(target.score_prompt([1, 2]).argmax()) == 3 and clock.now == 0.0
    rows = target.forward([3, 9, 5])  # 9 is off the script: what follows it is never read
    assert [int(r.argmax()) for r in rows[:2]] == [4, 0] and rows[1].unique().numel() == 1
    assert clock.now == pytest.approx(0.0115)  # 3 positions: between 11 and 12 ms
    target.rollback(3)
    assert int(target.forward([4])[0].argmax()) == 5  # back on the script


def test_plain_decoding_pays_one_step_per_token_after_the_first():
    (run,) = replay("none", [FRESH], profile(GPU_LIKE))
    assert run.seconds == pytest.approx((len(FRESH.answer) - 1) * 0.010)
    assert run.drafted == 0


@pytest.mark.parametrize(
    "method", ["auto:goodput", "ngram:heuristic", "ngram:fixed", "recycling:fixed", "aded:fixed"]
)
def test_replayed_methods_reproduce_the_recorded_answers(method):
    runs = replay(method, [COPIED, FRESH], profile(GPU_LIKE))
    assert [r.case for r in runs] == [COPIED, FRESH]  # replay raises if an id differs


def test_goodput_gains_where_copying_is_cheap_and_never_drafts_where_it_cannot_pay():
    cheap = profile(GPU_LIKE)
    ratios = speedups(replay("none", [COPIED], cheap), replay("auto:goodput", [COPIED], cheap))
    assert ratios["coding"] > 2.0
    linear = profile(LINEAR)  # the policy plans with it: it knows the costs from the first step
    cases = [COPIED, FRESH]
    runs = replay("auto:goodput", cases, linear)
    assert sum(r.drafted for r in runs) == 0
    assert speedups(replay("none", cases, linear), runs)["overall"] == pytest.approx(1.0)


@pytest.mark.parametrize(("given", "saved"), [(GPU_LIKE, LINEAR), (LINEAR, GPU_LIKE)])
def test_replay_plans_with_the_profile_it_is_given_not_one_saved_here(given, saved):
    """A saved profile of another shape for the same model, backend and threads (this
    machine's, after `adaspec profile`) changes nothing: goodput plans with the costs the
    replay charges."""
    cases = [COPIED, FRESH, COPIED]
    alone = replay("auto:goodput", cases, profile(given))
    profile(saved).save()
    beside = replay("auto:goodput", cases, profile(given))
    assert [(r.seconds, r.drafted, r.accepted) for r in beside] == [
        (r.seconds, r.drafted, r.accepted) for r in alone
    ]
    assert (sum(r.drafted for r in alone) > 0) == (given is GPU_LIKE)


def test_a_tree_node_is_accepted_where_it_is_the_answer_along_the_accepted_path():
    clock = ScriptedClock()
    target = ScriptedTarget(profile(GPU_LIKE), clock, vocab_size=100)
    target.play(Case(1, "qa", [1, 2], [3, 4, 5]))
    target.score_prompt([1, 2])
    rows = target.forward([7, 3, 4, 9], [-1, -1, 1, 1])  # 7 | 3 -> 4, 3 -> 9
    assert [int(r.argmax()) for r in rows] == [0, 4, 5, 0]
    target.commit([1, 2])
    assert target.cache == [1, 2, 3, 4] and int(target.forward([5])[0].argmax()) == 0


def test_recorded_rows_give_the_runners_up_where_the_script_goes():
    """With the baseline's rows recorded, a row on the script carries the target's
    runners-up at their probabilities, the script's token still first; off the script, a
    flat row."""
    case = Case(1, "qa", [1, 2], [3, 4], [[3, 8], [4, 9]], [[0.6, 0.3], [0.9, 0.05]])
    target = ScriptedTarget(profile(GPU_LIKE), ScriptedClock(), vocab_size=10)
    target.play(case)
    row = target.score_prompt([1, 2])
    assert row.softmax(-1)[[3, 8]].tolist() == pytest.approx([0.6, 0.3], abs=1e-3)
    off = target.forward([8])[0]
    assert int(off.argmax()) == 0 and off.unique().numel() == 1  # flat: nothing to learn


ROW_PROBS = (
    [0.6, 0.15, 0.08, 0.04, 0.04, 0.03, 0.02, 0.01],  # two runners-up recorded alike
    [0.9, 0.05, 0.02, 0.01, 0.005, 1e-3, 1e-6, 1e-7],  # an even tail would outrank the last
)


def recorded_cases(seed: int = 0, width: int = 20_000) -> list[Case]:
    """Answers over a wide vocabulary that partly copy their prompts, each token recorded
    with a few runners-up (ids anywhere in the vocabulary) and their probabilities."""
    rng = random.Random(seed)
    out = []
    for i in range(3):
        prompt = [rng.randrange(width) for _ in range(30)]
        fresh = [rng.randrange(width) for _ in range(8)]
        answer = prompt[5:15] + fresh + prompt[5:15] + fresh[:6]  # repeats its own text
        others = [[i for i in rng.sample(range(width), 8) if i != t][:7] for t in answer]
        top_ids = [[t, *runners_up] for t, runners_up in zip(answer, others, strict=True)]
        top_probs = [ROW_PROBS[j % 2] for j in range(len(answer))]
        out.append(Case(i, f"c{i}", prompt, answer, top_ids, top_probs))
    return out


def test_compact_rows_rank_and_weigh_the_named_ids_as_whole_rows_do():
    """On the compact vocabulary a row gives the ids it names the whole row's
    probabilities (within 0.1%, where a near-sure row's tail is held below its last
    runner-up), and its top 8 (recycling's width) are the whole row's, in order."""
    cases = recorded_cases()
    kept = torch.tensor(replaying.kept_ids(cases))
    small, compact_target = replaying.scripted(cases, profile(GPU_LIKE), ScriptedClock())
    whole_target = ScriptedTarget(profile(GPU_LIKE), ScriptedClock(), replaying.vocab_of(cases))
    for renumbered, case in zip(small, cases, strict=True):
        for target, played in ((compact_target, renumbered), (whole_target, case)):
            target.reset()
            target.play(played)
        rows = [
            (compact_target.score_prompt(renumbered.prompt), whole_target.score_prompt(case.prompt))
        ]
        rows += [
            (compact_target.forward([a])[0], whole_target.forward([b])[0])
            for a, b in zip(renumbered.answer[:-1], case.answer[:-1], strict=True)  # on the script
        ]
        for (part, whole), named in zip(rows, case.top_ids, strict=True):
            part_top, whole_top = part.topk(8).indices, whole.topk(8).indices
            assert kept[part_top].tolist() == whole_top.tolist() == named
            assert part.softmax(-1)[part_top].tolist() == pytest.approx(
                whole.softmax(-1)[whole_top].tolist(), rel=1e-3
            )
        part, whole = compact_target.forward([0])[0], whole_target.forward([0])[0]  # off: flat
        assert kept[part.topk(8).indices].tolist() == whole.topk(8).indices.tolist()


@pytest.mark.parametrize("method", ["auto:goodput", "recycling:fixed", "aded:fixed"])
def test_a_replay_on_the_ids_named_decides_as_on_the_whole_vocabulary(method, monkeypatch):
    """compact() renumbers the cases onto the ids they name: every drafter and policy
    choice, so every scripted second, is the same as on the full vocabulary's rows."""
    cases = recorded_cases()
    small = replay(method, cases, profile(GPU_LIKE))
    monkeypatch.setattr(replaying, "compact", list)  # the cases as recorded
    whole = replay(method, cases, profile(GPU_LIKE))
    assert [(r.seconds, r.drafted, r.accepted) for r in small] == [
        (r.seconds, r.drafted, r.accepted) for r in whole
    ]
    assert sum(r.drafted for r in whole) > 0


def test_a_bench_records_the_baseline_rows_for_replay(model_dir, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 7, "category": "coding", "turns": ["a"]}))
    out = tmp_path / "bench"
    options = BenchOptions(questions, str(model_dir), None, methods=["ngram"], peers=False)
    fields = {**options.__dict__, "max_new_tokens": 6, "out": out, "record_rows": 3}
    run_bench(BenchOptions(**fields))
    (case,) = load_cases(out)
    assert len(case.top_ids) == len(case.answer) == 6
    assert [ids[0] for ids in case.top_ids] == case.answer  # greedy: the top row's first
    assert all(len(p) == 3 and p[0] >= p[1] >= p[2] for p in case.top_probs)


def test_replay_command_reads_a_bench_folder(model_dir, tmp_path):
    out = tmp_path / "bench"
    questions = tmp_path / "q.jsonl"
    rows = [{"question_id": 7, "category": "coding", "turns": ["def add(a, b):"]}]
    questions.write_text("\n".join(json.dumps(q) for q in rows))
    options = BenchOptions(questions, str(model_dir), None, methods=["none"], peers=False)
    run_bench(BenchOptions(**{**options.__dict__, "max_new_tokens": 10, "out": out}))
    assert [c.question_id for c in load_cases(out)] == [7]
    costs = tmp_path / "costs.json"
    profile(GPU_LIKE).save(costs)
    args = ["replay", str(out), "--profile", str(costs), "--methods", "ngram:heuristic"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "replayed speedup" in result.stdout and "ngram:heuristic" in result.stdout


def test_replay_of_a_folder_without_a_bench_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["replay", str(tmp_path)])
    assert result.exit_code == 1
    assert "give a folder `adaspec bench` wrote" in result.stderr
    assert "Traceback" not in result.output
