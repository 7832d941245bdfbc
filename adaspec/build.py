"""Assembling an Engine: one frozen spec, built once by every command (generate, serve,
bench, replay, train-head) and by ``load()``, and handed here. Whether a draft model is
loaded is decided here and nowhere else, so a drafter or policy behaves the same wherever
it is run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

from adaspec.backends import (
    BACKENDS,
    Backend,
    torch_hf,  # noqa: F401  (registers the torch backend)
)
from adaspec.drafters import DRAFTERS
from adaspec.drafters.base import missing_draft_model
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.engine import Engine
from adaspec.errors import ConfigError
from adaspec.models import DEFAULT_DRAFT, DEFAULT_TARGET, resolve_model, weight_file_bytes
from adaspec.policies import POLICIES
from adaspec.profile import machine_profile

# Registers the llama.cpp backend; without llama-cpp-python GGUF files go through torch.
with contextlib.suppress(ImportError):
    from adaspec.backends import llama_cpp  # noqa: F401

NO_DRAFT = "none"  # a draft named so: draft without a model


@dataclass(frozen=True)
class EngineSpec:
    """What one engine is made of. ``draft`` None: the default pair's draft where the
    drafter can use one and the policy may ever ask it here; ``"none"``: no draft model.
    ``k``: the policy's draft-length knob (None: its default); ``context``: tokens of
    context per slot (None: what fits); ``slots``: requests in flight at once;
    ``suffix_cache_tokens``, ``draft_window``: DrafterOptions."""

    target: str | Path = DEFAULT_TARGET
    draft: str | Path | None = None
    drafter: str = "auto"
    policy: str = "goodput"
    k: int | None = None
    backend: str = "auto"
    draft_backend: str | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    context: int | None = None
    slots: int = 1
    suffix_cache_tokens: int = DEFAULT_OPTIONS.suffix_cache_tokens
    draft_window: int = DEFAULT_OPTIONS.draft_window

    def __post_init__(self) -> None:
        DRAFTERS.get(self.drafter)  # an unknown name fails before any model loads
        POLICIES.get(self.policy)
        check_counts(self.threads, self.slots)
        self.drafter_options  # noqa: B018  (a bad value fails now too)

    @property
    def drafter_options(self) -> DrafterOptions:
        return DrafterOptions(self.suffix_cache_tokens, self.draft_window)


def build_engine(
    spec: EngineSpec,
    target: Backend | None = None,
    draft: Backend | None = None,
    *,
    clock: Callable[[], float] = perf_counter,
    time_costs: bool = True,
    record_rows: int = 0,
) -> Engine:
    """An Engine as ``spec`` says, its models loaded here unless given loaded (a bench
    shares one pair among its methods; tests hand in tiny ones). A drafter that cannot use
    a draft model is built without it. A policy that plans with costs finds them timed
    on this machine (``time_costs=False``: a replay, whose costs are a given profile);
    ``record_rows``: keep each step's top-k rows in its outcome (Engine)."""
    drafter_cls, policy_cls = DRAFTERS.get(spec.drafter), POLICIES.get(spec.policy)
    if target is None:
        target = load_backend(
            spec.target, spec.backend, spec.device, spec.dtype, spec.threads,
            context=spec.context, slots=spec.slots,
        )  # fmt: skip
        draft = _load_draft(spec, target)
    if drafter_cls.needs_draft_model and draft is None:
        raise missing_draft_model(spec.drafter)
    if policy_cls.uses_cost_profile and time_costs:
        machine_profile(target, clock)  # timed once per model, CPU and threads, then saved
    draft = draft if drafter_cls.uses_draft_model else None
    made = drafter_cls.create(target, draft, spec.drafter_options)
    policy = policy_cls.create(spec.k, target)
    return Engine(target, made, policy, clock=clock, record_rows=record_rows, draft=draft)


def draft_to_load(spec: EngineSpec, target: Backend) -> str | Path | None:
    """The draft model to load for this spec: the one named; else, for a drafter that
    can draft with one and the default target, the default pair's draft, unless the
    policy could never ask it on this machine (on llama.cpp on a CPU, where a draft costs
    half a target step and 2 positions cost twice one, even drafts all accepted could not
    beat plain steps: not worth a second or so of every call, and the memory)."""
    drafter_cls = DRAFTERS.get(spec.drafter)
    if not drafter_cls.uses_draft_model:
        return None
    if spec.draft is not None:
        return None if str(spec.draft).lower() == NO_DRAFT else spec.draft
    if str(spec.target) != DEFAULT_TARGET:
        return None
    if drafter_cls.needs_draft_model:
        return DEFAULT_DRAFT
    share = weight_file_bytes(resolve_model(DEFAULT_DRAFT)) / weight_file_bytes(
        resolve_model(spec.target)
    )
    return DEFAULT_DRAFT if POLICIES.get(spec.policy).may_ask_draft_model(target, share) else None


def _load_draft(spec: EngineSpec, target: Backend) -> Backend | None:
    name = draft_to_load(spec, target)
    if name is None:
        return None
    return load_backend(
        name, spec.draft_backend or spec.backend, spec.device, spec.dtype, spec.threads,
        drafting=True, context=spec.context, slots=spec.slots,
    )  # fmt: skip


def check_counts(threads: int | None, slots: int) -> None:
    """Refuse a thread or slot count below 1, before any model loads."""
    if threads is not None and threads < 1:
        raise ConfigError(
            f"--threads must be at least 1, got {threads}; leave it out for all cores"
        )
    if slots < 1:
        raise ConfigError(f"--parallel must be at least 1, got {slots}")


def choose_backend(path: Path, requested: str) -> str:
    """``auto``: llama.cpp for GGUF files (named models are GGUF), torch for HF folders."""
    if requested != "auto":
        BACKENDS.get(requested)  # raises a ConfigError listing the valid names
        return requested
    if path.suffix == ".gguf" and "llama.cpp" in BACKENDS.names():
        return "llama.cpp"
    return "torch"


def load_backend(
    model: str | Path,
    backend: str = "auto",
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    drafting: bool = False,
    context: int | None = None,
    slots: int = 1,
) -> Backend:
    """A backend for a named model, a ``.gguf`` file or a Hugging Face model folder;
    ``drafting``: to serve as a draft model (a backend may lay it out for one row at a time);
    ``slots``: requests it can hold at once, each with a KV cache of its own."""
    check_counts(threads, slots)
    path = resolve_model(model)
    backend_cls = BACKENDS.get(choose_backend(path, backend))
    return backend_cls.load(
        path, device=device, dtype=dtype, threads=threads, drafting=drafting, context=context,
        slots=slots,
    )  # fmt: skip
