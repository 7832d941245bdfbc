"""What a benchmark run measures: adaspec configurations and the peers users would pick.

Every method turns prompt token ids into a Run. adaspec methods share one loaded target
(and draft) backend, since the runner calls one method at a time.
"""

from __future__ import annotations

import gc
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Protocol

import torch

from adaspec.backends.base import Backend
from adaspec.build import EngineSpec, build_engine
from adaspec.config import GenerationConfig
from adaspec.drafters import DRAFTERS
from adaspec.drafters.options import DEFAULT_OPTIONS
from adaspec.errors import ConfigError
from adaspec.policies import POLICIES


@dataclass
class Run:
    """One measured generation of one method on one question."""

    method: str
    question_id: int | str
    category: str
    repeat: int
    new_tokens: int
    wall_s: float
    token_ids: list[int] | None = None  # None for peers that only report text
    target_forwards: int | None = None
    drafted: int | None = None
    accepted: int | None = None
    draft_s: float | None = None
    verify_s: float | None = None
    prefill_s: float | None = None  # the prompt's forward, which also gives the first token
    accepted_per_step: list[int] = field(default_factory=list)
    peak_rss_mb: float = 0.0  # the process's peak resident memory after this run
    # The baseline's rows with --record-rows: per generated token, the target's likeliest
    # next tokens and their probabilities where it chose it (what replay feeds drafters).
    top_ids: list[list[int]] | None = None  # [new_tokens, k]
    top_probs: list[list[float]] | None = None  # [new_tokens, k]


class Method(Protocol):
    name: str

    def run(self, prompt: list[int], max_new_tokens: int) -> dict:
        """Generate greedily; return the Run fields it knows (new_tokens, wall_s, ...)."""
        ...


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class AdaspecMethod:
    """``drafter[:policy][@window=W]`` through the adaspec engine, e.g. ``none``,
    ``ngram:heuristic``, ``model@window=1024`` (the policy defaults to goodput; ``window``:
    the draft window, over the bench's ``--draft-window``, so a bench compares a draft
    model with and without one side by side). Drafters that can use the draft model get
    it, so ``auto`` has it as an arm, as ``adaspec generate`` runs it with the default pair."""

    def __init__(
        self,
        spec: str,
        target: Backend,
        draft: Backend | None,
        k: int | None = None,
        clock: Callable[[], float] = perf_counter,
        time_costs: bool = True,
        record_rows: int = 0,
        suffix_cache_tokens: int = DEFAULT_OPTIONS.suffix_cache_tokens,
        draft_window: int = DEFAULT_OPTIONS.draft_window,
    ) -> None:
        self.name = spec
        drafter, policy = self.names(spec)
        spec = EngineSpec(
            drafter=drafter,
            policy=policy,
            k=k,
            suffix_cache_tokens=suffix_cache_tokens,
            draft_window=method_window(spec, draft_window),
        )
        self.engine = build_engine(
            spec, target, draft, clock=clock, time_costs=time_costs, record_rows=record_rows
        )
        self.record_rows = record_rows

    @staticmethod
    def names(spec: str) -> tuple[str, str]:
        """``drafter[:policy]`` to the two registry names (the policy defaults to goodput)."""
        drafter, _, policy = spec.partition("@")[0].partition(":")
        return drafter, policy or "goodput"

    @classmethod
    def parse(cls, spec: str) -> tuple[type, type]:
        """``drafter[:policy][@window=W]`` to its classes; unknown names and a bad window
        raise a ConfigError."""
        drafter, policy = cls.names(spec)
        method_window(spec, DEFAULT_OPTIONS.draft_window)
        return DRAFTERS.get(drafter), POLICIES.get(policy)

    @classmethod
    def uses_draft(cls, spec: str) -> bool:
        return cls.parse(spec)[0].uses_draft_model

    def run(self, prompt: list[int], max_new_tokens: int) -> dict:
        result = self.engine.generate(prompt, GenerationConfig(max_new_tokens=max_new_tokens))
        stats = result.stats.summary()
        return {
            "new_tokens": stats["new_tokens"],
            "wall_s": stats["wall_s"],
            "token_ids": result.token_ids,
            "target_forwards": stats["target_forwards"],
            "drafted": stats["drafted"],
            "accepted": stats["accepted"],
            "draft_s": stats["draft_s"],
            "verify_s": stats["verify_s"],
            "prefill_s": stats["prefill_s"],
            "accepted_per_step": [s.accepted for s in result.stats.steps],
            **(_recorded_rows(result.stats.steps) if self.record_rows else {}),
        }


def method_window(spec: str, default: int) -> int:
    """The draft window a method spec names (``...@window=W``), else ``default``."""
    _, at, option = spec.partition("@")
    if not at:
        return default
    key, _, value = option.partition("=")
    if key != "window" or not value.isdigit():
        raise ConfigError(
            f"method {spec!r}: after @ give window=TOKENS (e.g. model@window=1024), "
            "the draft model's window"
        )
    return int(value)


def _recorded_rows(steps) -> dict:
    """Each step's chosen row (the accepted path's last): its top-k ids and probabilities.
    For the baseline, one per generated token."""
    ids, probs = [], []
    for step in steps:
        row = step.path[-1] + 1 if step.path else 0
        ids.append(list(step.rows.top_ids[row]))
        probs.append([round(p, 5) for p in step.rows.top_probs[row]])
    return {"top_ids": ids, "top_probs": probs}


@dataclass
class TimedPeer:
    """A peer library's own generate call, timed from the outside."""

    name: str
    generate: Callable[[list[int], int], int]  # (prompt ids, max new) -> new tokens made

    def run(self, prompt: list[int], max_new_tokens: int) -> dict:
        started = perf_counter()
        new_tokens = self.generate(prompt, max_new_tokens)
        return {"new_tokens": new_tokens, "wall_s": perf_counter() - started}


@dataclass
class PeerGroup:
    """Peers that share loaded models (one library's copy of the pair). Loaded when their
    turn comes and freed after it, so the bench never holds every library's copy at once
    (the transformers peers beside adaspec's torch models once took 21 of 24 GB)."""

    names: list[str]
    load: Callable[[], list[TimedPeer]]

    @contextmanager
    def loaded(self) -> Iterator[list[TimedPeer]]:
        peers = self.load()
        try:
            yield peers
        finally:
            peers.clear()  # the caller's reference goes empty: the models can be freed
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
