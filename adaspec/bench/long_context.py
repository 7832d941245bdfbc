"""The long-context workload (``adaspec bench --questions long``): prompts of about 4k, 8k
and 16k tokens, where reading the cache is shared by every row of a verify, so speculation
should pay more as the prompt grows (MagicDec's point; LongSpec's setting).

One long source file, CPython's ``argparse.py`` (PSF licence), cut at a line boundary to
each length, with the same three tasks at each: a summary of its classes, quoting a method
from near the top (retrieval across the whole context), and an edit of a function there.
One file cut three ways keeps the content alike, so the lengths differ in length alone.
Rebuild the shipped file with ``python -m adaspec.bench.long_context``.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

# Measured on argparse.py with the default pair's tokenizer: about 5 characters a token.
CHARS_PER_TOKEN = 5.0
LENGTHS = {"4k": 4096, "8k": 8192, "16k": 16384}
ROOM = 256  # tokens left for the task and the chat template

TASKS = (
    "List every class defined above, each with a one-line description of what it is for.",
    "Quote the method HelpFormatter._format_usage exactly as it is written above.",
    "Add type hints to the function _copy_items above, and reply with that function only.",
)


def argparse_source() -> str:
    """CPython's argparse.py from its first import on (its licence header and docstring
    left out)."""
    text = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()
    return text[text.index("import os as _os") :]


def cut(text: str, tokens: int) -> str:
    """The text's first lines that fit in about ``tokens`` tokens."""
    end = text.rfind("\n", 0, int((tokens - ROOM) * CHARS_PER_TOKEN))
    return text[: end + 1]


def prompt(source: str, task: str) -> str:
    return f"Here is a Python module:\n\n```python\n{source}```\n\n{task}"


def questions() -> list[dict]:
    source = argparse_source()
    return [
        {"question_id": f"{name}-{n}", "category": name, "turns": [prompt(cut(source, size), task)]}
        for name, size in LENGTHS.items()
        for n, task in enumerate(TASKS, 1)
    ]


if __name__ == "__main__":
    sys.stdout.writelines(json.dumps(q) + "\n" for q in questions())
