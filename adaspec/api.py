"""The Python API: ``load()`` an Engine by names, as the CLI does."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from adaspec.build import (  # noqa: F401  (re-exported: adaspec.api.load_backend etc.)
    EngineSpec,
    build_engine,
    choose_backend,
    load_backend,
)
from adaspec.engine import Engine
from adaspec.errors import ConfigError
from adaspec.request import encode_prompt  # noqa: F401  (kept as adaspec.api.encode_prompt)

SPEC_FIELDS = [f.name for f in fields(EngineSpec)]


def load(spec: EngineSpec | str | Path | None = None, /, **options: Any) -> Engine:
    """An Engine from an EngineSpec, or from a target and the spec's other fields as
    keywords: ``load("qwen2.5-coder-1.5b", drafter="ngram")``; ``load()``: the default pair.

    The default, ``auto`` drafter (every drafter that works here, as arms) with the
    ``goodput`` policy, which picks among them each step, speculates only as much as pays.
    A drafter that can draft with a model gets the default pair's draft when the target is
    the default one and no draft is named (``draft="none"`` leaves it out), unless the
    policy could never ask it on this machine (adaspec.build.draft_to_load)."""
    if isinstance(spec, EngineSpec):
        if options:
            raise ConfigError("pass an EngineSpec or its fields, not both")
        return build_engine(spec)
    unknown = set(options) - set(SPEC_FIELDS)
    if unknown:
        valid = ", ".join(SPEC_FIELDS)
        raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))}; valid: {valid}")
    if spec is not None:
        options["target"] = spec
    return build_engine(EngineSpec(**options))
