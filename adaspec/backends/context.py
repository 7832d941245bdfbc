"""How many tokens of context a backend reserves: what the user asks (``--context``), or
by default as much as fits in a share of the free memory, capped at the model's own."""

from __future__ import annotations

import os
from pathlib import Path

from adaspec.errors import ConfigError

MEMORY_SHARE = 0.25  # of the memory free at load time, for one model's KV cache
SMALLEST = 512


def context_size(requested: int | None, model_max: int, bytes_per_token: int) -> int:
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--context must be at least 1, got {requested}")
        if requested > model_max:
            raise ConfigError(
                f"--context {requested} exceeds the model's own context of {model_max} tokens"
            )
        return requested
    fits = int(available_memory() * MEMORY_SHARE) // max(bytes_per_token, 1)
    return min(model_max, max(SMALLEST, fits))


def available_memory() -> int:
    """Bytes the system could hand out now (MemAvailable), or the free pages elsewhere."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
