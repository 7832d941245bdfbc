"""Choosing the weight layout from whole-model timings, and keeping the choice per CPU."""

from __future__ import annotations

import json

import pytest

from adaspec.backends import layout_timing
from adaspec.backends.layout_timing import choose_layout, layout_path, place_weights
from adaspec.backends.packed_linear import (
    DENSE,
    PACKED,
    PREFILL_ROWS,
    XEON,
    Layout,
    PackedLinear,
    packing_available,
)
from tests.tiny import backend, tiny_model


def timings(dense: list[float], packed: list[float]) -> dict[str, float]:
    """ms of forwards over 1, 2, 3 rows and a prefill, dense then packed."""
    names = ["1", "2", "3", "prefill"]
    return {f"dense/{n}": d for n, d in zip(names, dense, strict=True)} | {
        f"packed/{n}": p for n, p in zip(names, packed, strict=True)
    }


# The whole 1.5B target on two cores, as measured (packed_linear's table, this timing).
XEON_MS = timings([209, 230, 233, 4900], [238, 286, 295, 6400])
EPYC_MS = timings([437, 908, 2040, 9266], [271, 361, 362, 4840])


@pytest.mark.parametrize(
    ("ms", "drafting", "layout"),
    [
        (XEON_MS, False, XEON),
        (EPYC_MS, False, PACKED),
        (XEON_MS, True, DENSE),  # a draft runs one row at a time: one copy, dense here
        (EPYC_MS, True, PACKED),
        (timings([300, 280, 400, 10], [250, 290, 300, 20]), False, Layout(frozenset({2}), 320)),
        (timings([300, 280, 400, 10], [250, 290, 300, 20]), True, PACKED),
    ],
)
def test_the_layout_is_the_faster_copy_per_row_count(ms, drafting, layout):
    assert choose_layout(ms, drafting) == layout
    assert layout.dense_from in (None, 1, PREFILL_ROWS)


needs_onednn = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN")


def layers_of(model) -> list[PackedLinear]:
    return [m for m in model.modules() if isinstance(m, PackedLinear)]


@needs_onednn
def test_place_weights_times_once_per_cpu_and_keeps_the_faster_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("ADASPEC_CACHE", str(tmp_path))
    monkeypatch.setattr(layout_timing, "cpu_name", lambda: "CPU A")
    target = backend(tiny_model(seed=0).float(), label="tiny.gguf")
    assert place_weights(target, drafting=False) == choose_layout(
        json.loads(layout_path("tiny.gguf", target.threads).read_text())["ms"], False
    )
    saved = json.loads(layout_path("tiny.gguf", target.threads).read_text())
    assert saved["cpu"] == "CPU A" and set(saved["ms"]) == set(EPYC_MS)

    # Saved on this CPU: a new load reads it instead of timing, with only the chosen copies.
    def no_timing(*args):
        raise AssertionError("timed again")

    monkeypatch.setattr(layout_timing, "time_layouts", no_timing)
    saved["ms"] = EPYC_MS
    layout_path("tiny.gguf", target.threads).write_text(json.dumps(saved))
    again = backend(tiny_model(seed=0).float(), label="tiny.gguf")
    assert place_weights(again, drafting=False) == PACKED
    assert all(layer.dense is None for layer in layers_of(again.model))

    # Timed on another CPU: timed anew.
    monkeypatch.setattr(layout_timing, "cpu_name", lambda: "CPU B")
    with pytest.raises(AssertionError, match="timed again"):
        place_weights(backend(tiny_model(seed=0).float(), label="tiny.gguf"), drafting=False)


@needs_onednn
def test_place_weights_leaves_a_model_it_cannot_pack(tmp_path, monkeypatch):
    monkeypatch.setenv("ADASPEC_CACHE", str(tmp_path))
    model = tiny_model(seed=0)  # float64
    assert place_weights(backend(model, label="tiny.gguf"), drafting=False) is None
    assert not layers_of(model)
    assert not layout_path("tiny.gguf", 1).exists()
