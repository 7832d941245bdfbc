"""Spec-Bench questions (JSONL: question_id, category, turns) and the subset a run uses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adaspec.errors import ConfigError

# Spec-Bench's 480 questions (Apache-2.0, LICENSE beside it), shipped inside the package.
DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    prompt: str  # the first turn: Spec-Bench's speed numbers are first-turn as well


def default_questions_path() -> Path:
    return DATA / "question.jsonl"


def shipped_workloads() -> list[str]:
    """The workloads shipped beside Spec-Bench's, by name (``--questions agentic``)."""
    return sorted(p.stem for p in DATA.glob("*.jsonl") if p.stem != "question")


def load_questions(path: Path) -> list[Question]:
    """A JSONL file's questions; a bare name is a shipped workload's (shipped_workloads)."""
    if not path.is_file() and str(path) in shipped_workloads():
        path = DATA / f"{path}.jsonl"
    if not path.is_file():
        names = ", ".join(shipped_workloads())
        raise ConfigError(
            f"questions file {path} not found; pass --questions PATH or a shipped one: {names}"
        )
    questions = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            questions.append(Question(row["question_id"], row["category"], row["turns"][0]))
        except (ValueError, KeyError, IndexError, TypeError):
            raise ConfigError(
                f"{path}:{number} is not a Spec-Bench question "
                "(a JSON object with question_id, category and a non-empty turns list)"
            ) from None
    if not questions:
        raise ConfigError(f"{path} holds no questions")
    return questions


def select(
    questions: Sequence[Question], categories: Sequence[str] | None, per_category: int | None
) -> list[Question]:
    """The first ``per_category`` questions of each requested category, in file order."""
    known = list(dict.fromkeys(q.category for q in questions))
    wanted = list(categories) if categories else known
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise ConfigError(f"unknown categories {unknown}; the file has: {', '.join(known)}")
    chosen = []
    for category in wanted:
        in_category = [q for q in questions if q.category == category]
        chosen += in_category[:per_category] if per_category else in_category
    return chosen
