"""OpenAI's response bodies and stream chunks, built from an ``Outcome``; plain functions of
plain data, so their shape is tested without a model.

Both endpoints share one frame (id, object, created, model); only a choice differs: a chat
choice carries a ``message`` (a ``delta`` when streamed), a text completion's a ``text``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from adaspec.server.generation import Outcome, Piece
from adaspec.stats import GenerationStats

DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class Frame:
    """What every body and chunk of one response repeats."""

    kind: str  # "chat" or "text"
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
            object.__setattr__(self, "id", f"{prefix}-{uuid.uuid4().hex[:24]}")

    def head(self, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.kind == "chat" else "text_completion"
        kind += ".chunk" if chunk and self.kind == "chat" else ""
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(outcome: Outcome) -> dict[str, Any]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens},
    }


def speculation(stats: GenerationStats) -> dict[str, Any]:
    """The ``adaspec`` object: what speculation did for this request."""
    summary = stats.summary()
    drafters: dict[str, dict[str, int]] = defaultdict(lambda: {"drafted": 0, "accepted": 0})
    for step in stats.steps:
        if step.drafter and step.drafted:
            drafters[step.drafter]["drafted"] += step.drafted
            drafters[step.drafter]["accepted"] += step.accepted
    return {
        "drafted": summary["drafted"],
        "accepted": summary["accepted"],
        "acceptance_rate": summary["acceptance_rate"],
        "mean_accepted": summary["mean_accepted"],
        "target_forwards": summary["target_forwards"],
        "drafters": dict(drafters),
    }


def step_mark(piece: Piece) -> dict[str, Any]:
    """A streamed chunk's ``adaspec`` object: the step that released its text, and how many
    of its first characters (code points) came from an accepted draft (docs/serving.md)."""
    step = piece.step
    assert step is not None
    return {
        "from_draft": piece.from_draft,
        "drafter": step.drafter or None,
        "drafted": step.drafted,
        "accepted": step.accepted,
        "tokens": step.emitted,
    }


def body(frame: Frame, text: str, outcome: Outcome) -> dict[str, Any]:
    """A whole (non-streamed) response."""
    if frame.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    choice |= {"logprobs": None, "finish_reason": outcome.finish_reason}
    return frame.head(chunk=False) | {
        "choices": [choice],
        "usage": usage(outcome),
        "adaspec": speculation(outcome.stats),
    }


def chunk(
    frame: Frame,
    text: str | None,
    finish_reason: str | None = None,
    role: bool = False,
) -> dict[str, Any]:
    """One streamed chunk of one choice: its text, or the role (chat's first), or the end."""
    if frame.kind == "chat":
        delta: dict[str, str] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta}
    else:
        choice = {"index": 0, "text": text or ""}
    choice |= {"logprobs": None, "finish_reason": finish_reason}
    return frame.head(chunk=True) | {"choices": [choice]}


def usage_chunk(frame: Frame, outcome: Outcome) -> dict[str, Any]:
    """The last chunk where the client asked for usage: no choices."""
    return frame.head(chunk=True) | {"choices": [], "usage": usage(outcome)}


def event(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
