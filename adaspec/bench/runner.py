"""The measurement loop: warm-up, then every method on each question in turn, so that
machine drift hits all methods alike, starting from a different method each time, so that
no method always runs first after another (a shared CPU's speed drifts by 10% and more from
one run to the next). adaspec's methods share the loaded pair and run together; each
group of peers runs after them with its own copy of the models, loaded only for its turn,
so the process never holds every library's copy at once. Each run is appended to
runs.jsonl as it finishes, which is what ``--resume`` reads back."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from adaspec.bench.methods import Method, PeerGroup, Run, peak_rss_mb
from adaspec.bench.questions import Question

WARMUP_TOKENS = 8
# Not a question's: a drafter that remembers earlier outputs (suffix) must not meet one early.
WARMUP_PROMPT = "Say hello."
T = TypeVar("T")


@dataclass(frozen=True)
class Tick:
    """Progress: ``done`` of ``total`` runs finished, ``label`` says what runs next,
    ``finished`` is the run that just ended (None before the first)."""

    done: int
    total: int
    label: str
    finished: Run | None = None


def runs_path(out_dir: Path) -> Path:
    return out_dir / "runs.jsonl"


def load_runs(out_dir: Path) -> list[Run]:
    path = runs_path(out_dir)
    if not path.is_file():
        return []
    return [Run(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def rotated(items: Sequence[T], turn: int) -> list[T]:
    """The items in order, starting at number ``turn`` (modulo their count)."""
    start = turn % len(items)
    return [*items[start:], *items[:start]]


def measure(
    methods: Sequence[Method],
    questions: Sequence[Question],
    encode: Callable[[str], list[int]],
    max_new_tokens: int,
    repeats: int,
    out_dir: Path,
    resume: bool = False,
    on_tick: Callable[[Tick], None] = lambda tick: None,
    peer_groups: Sequence[PeerGroup] = (),
) -> list[Run]:
    """Run every (question, repeat, method) not already in runs.jsonl; return all runs.
    adaspec's methods run first, interleaved; then each group of peers, interleaved among
    themselves, with its models loaded only for its turn."""
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = load_runs(out_dir) if resume else []
    done = {(r.method, r.question_id, r.repeat) for r in previous}
    prompts = {q.question_id: encode(q.prompt) for q in questions}
    warmup = encode(WARMUP_PROMPT)
    (out_dir / "prompts.json").write_text(json.dumps(prompts))  # what `adaspec replay` reads
    rounds = [(q, repeat) for q in questions for repeat in range(repeats)]

    def todo(names: Sequence[str]) -> list[tuple[Question, int, int]]:
        """(question, repeat, index of the method) not yet run, rotated per round."""
        order = list(range(len(names)))
        return [
            (q, repeat, m)
            for turn, (q, repeat) in enumerate(rounds)
            for m in rotated(order, turn)
            if (names[m], q.question_id, repeat) not in done
        ]

    blocks = [(None, todo([m.name for m in methods]))]
    blocks += [(group, todo(group.names)) for group in peer_groups]
    runs, progress = list(previous), _Progress(sum(len(b) for _, b in blocks), on_tick)
    with runs_path(out_dir).open("a" if resume else "w") as sink:
        for group, block in blocks:
            if block:
                with _loaded(group, methods) as runners:
                    for run in _run_block(
                        runners, block, prompts, warmup, max_new_tokens, progress
                    ):
                        sink.write(json.dumps(asdict(run)) + "\n")
                        sink.flush()
                        runs.append(run)
    progress.next("done")
    return runs


def _run_block(
    runners: Sequence[Method],
    block: Sequence[tuple[Question, int, int]],
    prompts: dict,
    warmup: list[int],
    max_new_tokens: int,
    progress: _Progress,
) -> Iterator[Run]:
    for method in runners:  # warm-up: caches, threads and allocators settle before timing
        method.run(warmup, WARMUP_TOKENS)
    for question, repeat, m in block:
        method = runners[m]
        progress.next(f"q{question.question_id} {question.category} · {method.name}")
        fields = method.run(prompts[question.question_id], max_new_tokens)
        run = Run(
            method=method.name,
            question_id=question.question_id,
            category=question.category,
            repeat=repeat,
            peak_rss_mb=round(peak_rss_mb(), 1),
            **fields,
        )
        progress.finished(run)
        yield run


class _Progress:
    """Ticks for the caller: what runs next, and the run that just finished."""

    def __init__(self, total: int, on_tick: Callable[[Tick], None]) -> None:
        self.total, self.on_tick = total, on_tick
        self.done, self.last = 0, None

    def next(self, label: str) -> None:
        self.on_tick(Tick(self.done, self.total, label, self.last))

    def finished(self, run: Run) -> None:
        self.done, self.last = self.done + 1, run


@contextmanager
def _loaded(group: PeerGroup | None, methods: Sequence[Method]) -> Iterator[Sequence[Method]]:
    if group is None:
        yield methods
    else:
        with group.loaded() as peers:
            yield peers
