"""Options several commands share (generate, serve, bench, profile, train-head), defined
once so their help cannot drift apart."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaspec import models
from adaspec.drafters import DRAFTERS
from adaspec.errors import ConfigError
from adaspec.policies import POLICIES

Target = Annotated[str, typer.Option(help="Target model: name, .gguf file or HF folder.")]
Draft = Annotated[
    str | None,
    typer.Option(
        help="Draft model, for --drafter auto (one arm) or model; with the default target: "
        f"{models.DEFAULT_DRAFT}. `none`: draft without a model."
    ),
]
Backend = Annotated[
    str, typer.Option(help="auto (llama.cpp for GGUF, torch for HF folders) | llama.cpp | torch")
]
DraftBackend = Annotated[
    str | None, typer.Option(help="Backend of the draft model (default: as --backend).")
]
Drafter = Annotated[
    str,
    typer.Option(
        help=f"{' | '.join(DRAFTERS.names())}. auto: asks the model-free drafters "
        "(ngram, suffix, recycling, aded) and the draft model's (model, model-tree) where it pays."
    ),
]
Policy = Annotated[
    str,
    typer.Option(
        help=f"{' | '.join(POLICIES.names())}. goodput: speculate only as much as pays on "
        "this machine."
    ),
]
K = Annotated[
    int | None,
    typer.Option(
        "--k",
        help="Draft length: most per step for goodput and confidence (8), initial for "
        "heuristic (4), exact for fixed (4).",
    ),
]
Threads = Annotated[int | None, typer.Option(help="CPU threads, at least 1 (default: all cores).")]
Context = Annotated[
    int | None,
    typer.Option(help="Tokens of context to reserve (default: what fits, up to the model's)."),
]
SuffixCacheTokens = Annotated[
    int,
    typer.Option(
        help="Earlier requests' output tokens the suffix drafter keeps, shared by every "
        "request (0: each request drafts from its own text only)."
    ),
]
DraftWindow = Annotated[
    int,
    typer.Option(
        help="The text's last tokens the draft model attends to, beside its first 4, so its "
        "cost stops growing with a long prompt (0: the whole text)."
    ),
]
Device = Annotated[str | None, typer.Option(help="torch device (default: cuda if present).")]
Dtype = Annotated[
    str | None, typer.Option(help="torch dtype: float32 (default) | bfloat16 | float16.")
]
Questions = Annotated[
    Path | None,
    typer.Option(
        help="Spec-Bench JSONL, or a shipped workload: `agentic` (SQL, tool calls and edits "
        "over one schema, tool list and module), `long` (4k, 8k and 16k-token prompts). "
        "Default: Spec-Bench's 480 questions."
    ),
]


def counts(text: str, option: str) -> tuple[int, ...]:
    """An option's comma-separated positive whole numbers ('4, 1,4' -> (1, 4)): sorted,
    without repeats."""
    try:
        values = {int(v) for v in text.split(",") if v.strip()}
    except ValueError:
        values = set()
    if not values or min(values) < 1:
        raise ConfigError(f"{option} takes positive whole numbers like 1,2,4,8; got {text!r}")
    return tuple(sorted(values))
