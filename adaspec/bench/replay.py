"""``adaspec replay``: rerun adaspec methods over a bench's recorded greedy answers, on a
clock that charges each target forward what a cost profile says.

Greedy decoding is deterministic, so the baseline's recorded answer is a complete script
of what the target picks at every position a method can reach (a draft token is accepted
exactly when it is the script's next token). The real engine, drafter and policy then
decide as they would on the profiled machine, in milliseconds per question and without
that machine's noise: a researcher can compare policies or tune one on hundreds of
questions. It does not measure speed (``adaspec bench`` does); its ratios are what the
profile predicts, decode only (the prefill is the same work for every method).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from adaspec.backends.base import SlotRows
from adaspec.bench.methods import AdaspecMethod
from adaspec.config import GenerationConfig
from adaspec.drafters import DRAFTERS
from adaspec.drafters.options import DEFAULT_OPTIONS
from adaspec.errors import ConfigError
from adaspec.models import resolve_model
from adaspec.profile import CostProfile, profile_path
from adaspec.tree import TokenTree

BASELINE = "none"
KEPT_LOW_IDS = 64  # a compact replay keeps these ids whether named or not (kept_ids)
TIE_BREAK = 1e-5  # nats between runners-up recorded with equal probabilities
TAIL_GAP = 1.0  # nats between a row's last named runner-up and its unnamed tail
# The most runners-up of a row any drafter learns from (recycling's 8): rows that record
# as many can be replayed on the ids the cases name (compact).
DRAFTERS_ROW_TOP_K = max(getattr(DRAFTERS.get(name), "row_top_k", 0) for name in DRAFTERS.names())


@dataclass(frozen=True)
class Case:
    """One recorded greedy answer: the prompt's ids and the ids the target generated."""

    question_id: int | str
    category: str
    prompt: list[int]
    answer: list[int]
    # Where the bench recorded them (--record-rows): per answer token, the target's
    # likeliest tokens and their probabilities at that position.
    top_ids: list[list[int]] | None = None  # [len(answer), k]
    top_probs: list[list[float]] | None = None  # [len(answer), k]


@dataclass(frozen=True)
class Replayed:
    """One method on one case: the scripted seconds its target forwards took."""

    method: str
    case: Case
    seconds: float
    drafted: int
    accepted: int


class ScriptedClock:
    """Time that passes only when the scripted target charges a forward."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedTarget:
    """A Backend that answers from a script: row i of a forward puts all its mass on the
    script's next token while the cache still follows the script (a flat row after a
    rejected draft token, which verification never reads), and charges the clock the
    profile's cost of a forward over that many positions at that context. A drafter that
    learns from the rows (recycling, aded) learns only the target's first choices here,
    not its runners-up: a replay understates it. With ``slots``, each slot plays its own
    case, and a pass shared by several is charged once, by its total rows."""

    tokenizer = None

    def __init__(
        self, profile: CostProfile, clock: ScriptedClock, vocab_size: int, slots: int = 1
    ) -> None:
        self.cost_profile = profile  # what a policy plans with (profile.planning_profile)
        self.clock = clock
        self.label, self.name, self.threads = profile.model, profile.backend, profile.threads
        self.script: list[int] = []
        self.case: Case | None = None
        self.cache: list[int] = []
        self.on_script = 0  # how many leading cached tokens follow the script
        self._vocab_size = vocab_size
        self._views = [self] + [ScriptedTarget(profile, clock, vocab_size) for _ in range(1, slots)]

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def context_length(self) -> int:
        return 1 << 30

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset()  # the script's length ends it, EOS or not

    @property
    def length(self) -> int:
        return len(self.cache)

    @property
    def slots(self) -> int:
        return len(self._views)

    def slot(self, index: int) -> ScriptedTarget:
        return self._views[index]

    def forward_slots(self, rows: Sequence[SlotRows]) -> list[torch.Tensor]:
        """One pass over several slots' rows: charged once, for all its rows, at the mean
        context of the slots it extends."""
        total = sum(len(tokens) for _, tokens, _ in rows)
        context = sum(self._views[slot].length + len(tokens) for slot, tokens, _ in rows)
        self.clock.now += self.cost_profile.cost_ms(total, context // len(rows)) / 1000
        return [self._views[slot].score(tokens, parents) for slot, tokens, parents in rows]

    def play(self, case: Case) -> None:
        self.script = [*case.prompt, *case.answer]
        self.case = case

    def reset(self) -> None:
        self.cache, self.on_script = [], 0

    def prefill(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self._append(token)

    def score_prompt(self, tokens: Sequence[int]) -> torch.Tensor:
        self.prefill(tokens)
        return self._next_row()

    def forward(self, tokens: Sequence[int], parents: Sequence[int] | None = None) -> torch.Tensor:
        """Row i follows the script while node i's root path does (a tree's nodes are
        accepted exactly when they are the recorded answer along the accepted path)."""
        self.clock.now += (
            self.cost_profile.cost_ms(len(tokens), len(self.cache) + len(tokens)) / 1000
        )
        return self.score(tokens, parents)

    def score(self, tokens: Sequence[int], parents: Sequence[int] | None = None) -> torch.Tensor:
        """``forward`` without charging the clock (a shared pass charges once)."""
        tree = TokenTree.of(tokens, parents)
        self._start, self._tree = len(self.cache), tree
        rows = []
        for node in range(len(tree)):
            self.prefill(tree.path_tokens(node))
            rows.append(self._next_row())
            self.rollback(self._start)
        self.prefill(tokens)  # held until commit keeps one path
        return torch.stack(rows) if rows else torch.zeros(0, self._vocab_size)  # [k, vocab]

    def commit(self, path: Sequence[int]) -> None:
        self.rollback(self._start)
        self.prefill([self._tree.tokens[i] for i in path])

    def forward_hidden(self, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise ConfigError("replay has no hidden states: replay methods without an acceptance head")

    def rollback(self, length: int) -> None:
        del self.cache[length:]
        self.on_script = min(self.on_script, length)

    def _append(self, token: int) -> None:
        at = len(self.cache)
        self.cache.append(token)
        if self.on_script == at and at < len(self.script) and self.script[at] == token:
            self.on_script += 1

    def _next_row(self) -> torch.Tensor:
        at = len(self.cache)
        follows = self.on_script == at and at < len(self.script)
        if not follows:  # never read by verification; flat, so drafters learn nothing from it
            return torch.zeros(self._vocab_size)  # [vocab], argmax 0
        row = torch.full((self._vocab_size,), -30.0)  # [vocab] logits: the script is sure
        row[self.script[at]] = 0.0
        case = self.case
        recorded = case is not None and case.top_ids is not None and case.top_probs is not None
        answered = at - len(case.prompt) if case is not None else -1
        if recorded and 0 <= answered < len(case.top_ids):
            ids, probs = case.top_ids[answered], case.top_probs[answered]
            named = torch.tensor(probs).clamp_min(1e-9).log()  # the recorded runners-up
            named -= TIE_BREAK * torch.arange(len(ids))  # equal ones keep the record's order
            rest = max(1.0 - sum(probs), 1e-9) / max(self._vocab_size - len(ids), 1)
            # The mass the record leaves, spread over the rest, each below the last named:
            # an even spread would outrank a near-sure row's runners-up and put ids the
            # record never named in a drafter's top-k.
            row.fill_(min(math.log(rest), float(named.min()) - TAIL_GAP))
            row[ids] = named
            if int(row.argmax()) != self.script[at]:  # greedy chose it: it stays the argmax
                row[self.script[at]] = row.max() + 1e-4
        return row


def load_cases(bench_dir: Path) -> list[Case]:
    """The baseline's first-repeat answers in a bench folder, with the prompts it saved."""
    runs_file, prompts_file = bench_dir / "runs.jsonl", bench_dir / "prompts.json"
    if not runs_file.is_file() or not prompts_file.is_file():
        raise ConfigError(
            f"{bench_dir} has no runs.jsonl and prompts.json; give a folder `adaspec bench` wrote"
        )
    prompts = json.loads(prompts_file.read_text())
    cases = []
    for line in runs_file.read_text().splitlines():
        run = json.loads(line)
        if run["method"] == BASELINE and run["repeat"] == 0:
            prompt = prompts[str(run["question_id"])]
            ids, probs = run.get("top_ids"), run.get("top_probs")
            cases.append(
                Case(run["question_id"], run["category"], prompt, run["token_ids"], ids, probs)
            )
    if not cases:
        raise ConfigError(f"{bench_dir}/runs.jsonl has no `none` runs to replay")
    return cases


def saved_profile(bench_dir: Path) -> CostProfile:
    """The cost profile saved on this machine for the bench's target, backend and threads."""
    meta = json.loads((bench_dir / "results.json").read_text())["meta"]
    target = next(iter(meta["models"]))  # the target comes first, then the draft
    path = profile_path(str(resolve_model(target)), meta["backend"], meta["threads"])
    if not path.is_file():
        raise ConfigError(
            f"no cost profile at {path}; run `adaspec profile --backend {meta['backend']}` "
            "or pass --profile"
        )
    return CostProfile.load(path)


def replay(
    method: str,
    cases: Sequence[Case],
    profile: CostProfile,
    suffix_cache_tokens: int = DEFAULT_OPTIONS.suffix_cache_tokens,
) -> list[Replayed]:
    """One method over the cases in order, its policy learning across them as in a bench.
    Raises if the method's output leaves the script: that would be a lossless bug. Model-free
    only: there is no draft model to script, so ``auto`` replays without its model arm."""
    clock = ScriptedClock()
    cases, target = scripted(cases, profile, clock)
    engine = AdaspecMethod(
        method, target, None, clock=clock, time_costs=False, suffix_cache_tokens=suffix_cache_tokens
    ).engine
    replayed = []
    for case in cases:
        target.play(case)
        config = GenerationConfig(max_new_tokens=len(case.answer), stop_at_eos=False)
        result = engine.generate(case.prompt, config)
        if result.token_ids != case.answer:
            raise AssertionError(
                f"{method} left the recorded answer of question {case.question_id}"
            )
        summary = result.stats.summary()
        seconds = result.stats.wall_s  # the engine timed it on the scripted clock
        replayed.append(Replayed(method, case, seconds, summary["drafted"], summary["accepted"]))
    return replayed


def vocab_of(cases: Sequence[Case]) -> int:
    """A vocabulary holding every id the cases name."""
    return 1 + max(max([*c.prompt, *c.answer, *_flat(c.top_ids)]) for c in cases)


def scripted(
    cases: Sequence[Case], profile: CostProfile, clock: ScriptedClock, slots: int = 1
) -> tuple[list[Case], ScriptedTarget]:
    """The cases, on a compact vocabulary where their rows allow it (``compact``), and a
    target scripted to play them."""
    played = compact(cases) if rows_reach(cases) >= DRAFTERS_ROW_TOP_K else list(cases)
    target = ScriptedTarget(profile, clock, vocab_of(played), slots)
    return played, target


def compact(cases: Sequence[Case]) -> list[Case]:
    """The cases renumbered onto the ids they name, in order. Where every row records at
    least as many runners-up as any drafter learns from, a row ranks and weighs them as
    on the whole vocabulary (its unnamed tail holds the same mass, below them), so every
    choice a drafter or policy makes is the same; and rows of a few thousand ids instead
    of 152k make a replay with tree drafters several times faster."""
    new = {old: index for index, old in enumerate(kept_ids(cases))}

    def renumber(tokens: list[int]) -> list[int]:
        return [new[t] for t in tokens]

    return [
        replace(
            c,
            prompt=renumber(c.prompt),
            answer=renumber(c.answer),
            top_ids=[renumber(row) for row in c.top_ids] if c.top_ids is not None else None,
        )
        for c in cases
    ]


def rows_reach(cases: Sequence[Case]) -> int:
    """The fewest runners-up any recorded row holds (0 where a case has none recorded)."""
    return min(min((len(row) for row in c.top_ids), default=0) if c.top_ids else 0 for c in cases)


def speedups(baseline: Sequence[Replayed], method: Sequence[Replayed]) -> dict[str, float]:
    """Per category and ``overall``: the baseline's scripted seconds over the method's."""
    base: dict[str, float] = {}
    ours: dict[str, float] = {}
    for b, m in zip(baseline, method, strict=True):
        for key in (b.case.category, "overall"):
            base[key] = base.get(key, 0.0) + b.seconds
            ours[key] = ours.get(key, 0.0) + m.seconds
    return {key: base[key] / ours[key] for key in base}


def kept_ids(cases: Sequence[Case]) -> list[int]:
    """The ids a compact replay keeps, in order: those the cases name, and the lowest (a
    flat row off the script ties everywhere, and its top-k is the lowest ids)."""
    named = {i for c in cases for i in (*c.prompt, *c.answer, *_flat(c.top_ids))}
    return sorted(named | set(range(KEPT_LOW_IDS)))


def _flat(rows: list[list[int]] | None) -> list[int]:
    return [i for row in rows for i in row] if rows else []
