"""The measurement loop: warm-up, then every method on each question in turn, so that
machine drift hits all methods alike, starting from a different method each time, so that
no method always runs first after another library's (a shared CPU's speed drifts by 10% and
more from one run to the next). Each run is appended to runs.jsonl as it finishes, which
is what ``--resume`` reads back."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from adaspec.bench.methods import Method, Run, peak_rss_mb
from adaspec.bench.questions import Question

WARMUP_TOKENS = 8


@dataclass(frozen=True)
class Tick:
    """Progress: ``done`` of ``total`` runs finished, ``label`` says what runs next."""

    done: int
    total: int
    label: str


def runs_path(out_dir: Path) -> Path:
    return out_dir / "runs.jsonl"


def load_runs(out_dir: Path) -> list[Run]:
    path = runs_path(out_dir)
    if not path.is_file():
        return []
    return [Run(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def rotated(methods: Sequence[Method], turn: int) -> list[Method]:
    """The methods in order, starting at number ``turn`` (modulo their count)."""
    start = turn % len(methods)
    return [*methods[start:], *methods[:start]]


def measure(
    methods: Sequence[Method],
    questions: Sequence[Question],
    encode: Callable[[str], list[int]],
    max_new_tokens: int,
    repeats: int,
    out_dir: Path,
    resume: bool = False,
    on_tick: Callable[[Tick], None] = lambda tick: None,
) -> list[Run]:
    """Run every (question, repeat, method) not already in runs.jsonl; return all runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = load_runs(out_dir) if resume else []
    done = {(r.method, r.question_id, r.repeat) for r in previous}
    prompts = {q.question_id: encode(q.prompt) for q in questions}
    (out_dir / "prompts.json").write_text(json.dumps(prompts))  # what `adaspec replay` reads
    for method in methods:  # warm-up: caches, threads and allocators settle before timing
        method.run(prompts[questions[0].question_id], WARMUP_TOKENS)
    runs = list(previous)
    rounds = [(q, repeat) for q in questions for repeat in range(repeats)]
    todo = [
        (q, repeat, m)
        for turn, (q, repeat) in enumerate(rounds)
        for m in rotated(methods, turn)
        if (m.name, q.question_id, repeat) not in done
    ]
    with runs_path(out_dir).open("a" if resume else "w") as sink:
        for i, (question, repeat, method) in enumerate(todo):
            on_tick(
                Tick(i, len(todo), f"q{question.question_id} {question.category} · {method.name}")
            )
            fields = method.run(prompts[question.question_id], max_new_tokens)
            run = Run(
                method=method.name,
                question_id=question.question_id,
                category=question.category,
                repeat=repeat,
                peak_rss_mb=round(peak_rss_mb(), 1),
                **fields,
            )
            sink.write(json.dumps(asdict(run)) + "\n")
            sink.flush()
            runs.append(run)
        on_tick(Tick(len(todo), len(todo), "done"))
    return runs
