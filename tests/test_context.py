"""How much context a backend reserves: --context, or what fits, up to the model's own."""

from __future__ import annotations

import pytest

from adaspec.backends import context
from adaspec.errors import ConfigError


@pytest.mark.parametrize(
    ("requested", "free_gib", "expected"),
    [
        (2048, 16, 2048),  # asked: taken as it is
        (None, 16, 32768),  # plenty free: the model's own
        (None, 0.25, 2048),  # a quarter of 0.25 GiB at 32 KiB a token
        (None, 0.001, context.SMALLEST),  # never below a usable minimum
    ],
)
def test_context_size(monkeypatch, requested, free_gib, expected):
    monkeypatch.setattr(context, "available_memory", lambda: int(free_gib * 2**30))
    assert context.context_size(requested, 32768, 32 * 1024) == expected


@pytest.mark.parametrize(("requested", "fragment"), [(0, "at least 1"), (40000, "exceeds")])
def test_a_context_the_model_cannot_take_is_refused(requested, fragment):
    with pytest.raises(ConfigError, match=fragment):
        context.context_size(requested, 32768, 1)
