"""Loading models and assembling an Engine from names: the Python API behind the CLI."""

from __future__ import annotations

import contextlib
from pathlib import Path

from adaspec.backends import (
    BACKENDS,
    Backend,
    torch_hf,  # noqa: F401  (registers the torch backend)
)
from adaspec.build import build_engine
from adaspec.drafters import DRAFTERS
from adaspec.engine import Engine
from adaspec.errors import ConfigError
from adaspec.models import DEFAULT_DRAFT, DEFAULT_TARGET, resolve_model, weight_file_bytes
from adaspec.policies import POLICIES
from adaspec.request import encode_prompt  # noqa: F401  (kept as adaspec.api.encode_prompt)

# Registers the llama.cpp backend; without llama-cpp-python GGUF files go through torch.
with contextlib.suppress(ImportError):
    from adaspec.backends import llama_cpp  # noqa: F401


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
) -> Backend:
    """A backend for a named model, a ``.gguf`` file or a Hugging Face model folder;
    ``drafting``: to serve as a draft model (a backend may lay it out for one row at a time)."""
    if threads is not None and threads < 1:
        raise ConfigError(
            f"--threads must be at least 1, got {threads}; leave it out for all cores"
        )
    path = resolve_model(model)
    backend_cls = BACKENDS.get(choose_backend(path, backend))
    return backend_cls.load(
        path, device=device, dtype=dtype, threads=threads, drafting=drafting, context=context
    )


def _draft_for(target: str | Path, draft: str | Path | None, usable: bool) -> str | Path | None:
    """The draft model to load: the one named, else the default pair's where it fits."""
    if draft is not None and str(draft).lower() == "none":
        return None
    if draft is None and usable and str(target) == DEFAULT_TARGET:
        return DEFAULT_DRAFT
    return draft


def load(
    target: str | Path = DEFAULT_TARGET,
    draft: str | Path | None = None,
    drafter: str = "auto",
    policy: str = "goodput",
    k: int | None = None,
    backend: str = "auto",
    draft_backend: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    context: int | None = None,
) -> Engine:
    """An Engine for a target (and optional draft model) given by name or path.

    The default, ``auto`` drafter (every drafter that works here, as arms) with the
    ``goodput`` policy, which picks among them each step, speculates only as much as pays.
    A drafter that can draft with a model (``auto``, ``model``) gets the default pair's
    draft when the target is the default one and no draft is named; ``draft="none"``
    leaves it out. Whether the draft model pays is the policy's to find out on this
    machine: on a CPU running torch it does; under
    llama.cpp, where it costs half a target step and 2 positions cost twice one, even
    drafts all accepted could not beat plain steps, so the policy rules it out before it
    is loaded (a second or so of every CLI call, and its memory).
    ``k`` is the policy's draft-length knob (None: the policy's default); ``context`` the
    tokens of context to reserve (None: as much as fits in memory, up to the model's own).
    """
    drafter_cls = DRAFTERS.get(drafter)
    policy_cls = POLICIES.get(policy)  # an unknown name fails before any model loads
    named = draft
    draft = _draft_for(target, draft, drafter_cls.uses_draft_model)
    if drafter_cls.needs_draft_model and draft is None:
        raise ConfigError(f"drafter {drafter!r} needs a draft model: pass --draft NAME_OR_PATH")
    target_backend = load_backend(target, backend, device, dtype, threads, context=context)
    if draft is not None and named is None and not drafter_cls.needs_draft_model:
        share = weight_file_bytes(resolve_model(draft)) / weight_file_bytes(resolve_model(target))
        if not policy_cls.may_ask_draft_model(target_backend, share):
            draft = None  # the default draft could never pay here: not worth its load
    draft_model = None
    if draft is not None:  # named, or the default pair's for a drafter that uses one
        draft_model = load_backend(
            draft, draft_backend or backend, device, dtype, threads, True, context
        )
    return build_engine(target_backend, draft_model, drafter, policy, k)
