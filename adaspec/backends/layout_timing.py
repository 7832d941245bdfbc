"""The weight layout that serves this machine fastest: timed on the whole model once per
model file, CPU and thread count, then read from ``$ADASPEC_CACHE/layouts/``.

Which copy of an fp32 weight (MKL's dense or oneDNN's packed, see packed_linear) scores one
to three rows and long prefills faster depends on the CPU: dense wins on an Intel Xeon
(Sapphire Rapids), packed wins everywhere on an AMD EPYC, by 1.6x for one row and 5x for
three. A layer timed alone misleads (its weight stays in cache, while a whole model streams
from memory: on the EPYC one lone layer called 2 to 8 rows faster dense), so the timing runs
the whole model, in each layout: forwards over 1, 2 and 3 rows after a short context, and a
prefill of PREFILL_ROWS rows. It takes about 20 s for the 1.5B target on two cores, once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from time import perf_counter

from adaspec.backends.base import Backend
from adaspec.backends.packed_linear import (
    DENSE,
    PACKED,
    PREFILL_ROWS,
    XEON,
    Layout,
    PackedLinear,
    pack_linears,
    use_layout,
)
from adaspec.models import cache_dir
from adaspec.profile import cpu_name, model_stem, plain_tokens, time_forward

TIMED_ROWS = (1, 2, 3)  # a plain step and short verifies: where the CPUs differ
CONTEXT = 64  # tokens before the timed forwards
REPEATS = 2  # timed forwards per point after a warm-up; the least counts


def choose_layout(ms: Mapping[str, float], drafting: bool) -> Layout:
    """The layout from whole-model timings, ``ms["dense/2"]``: a forward over 2 rows with
    dense weights, ``ms["packed/prefill"]``: a prefill with packed ones. A draft model runs
    one row at a time, so it keeps one copy, the faster for one row; a target keeps the
    packed one for batches and the dense one as well where it wins somewhere."""
    dense = [rows for rows in TIMED_ROWS if ms[f"dense/{rows}"] < ms[f"packed/{rows}"]]
    if drafting:
        return DENSE if 1 in dense else PACKED
    prefill = PREFILL_ROWS if ms["dense/prefill"] < ms["packed/prefill"] else None
    return Layout(frozenset(dense), prefill)


def time_layouts(backend: Backend, layers: list[PackedLinear]) -> dict[str, float]:
    """Milliseconds of each timed forward in each layout (the layers hold both copies)."""
    tokens = plain_tokens(backend.vocab_size, PREFILL_ROWS)
    ms: dict[str, float] = {}
    for name, layout in (("dense", DENSE), ("packed", PACKED)):
        use_layout(layers, layout, free=False)
        backend.reset()
        backend.prefill(tokens[:CONTEXT])
        for rows in TIMED_ROWS:
            ms[f"{name}/{rows}"] = min(time_forward(backend, tokens[:rows], CONTEXT, REPEATS))
        backend.reset()
        started = perf_counter()
        backend.prefill(tokens)
        ms[f"{name}/prefill"] = (perf_counter() - started) * 1000
    backend.reset()
    return ms


def place_weights(backend: Backend, drafting: bool) -> Layout | None:
    """Pack the backend's fp32 CPU linear layers in this machine's fastest layout, timing
    the layouts first where no timing of this model, CPU and thread count is saved; None
    where nothing is packable (a GPU, another dtype)."""
    model = backend.model  # type: ignore[attr-defined]
    path = layout_path(backend.label, backend.threads)
    saved = _load(path)
    if saved is not None:
        layout = choose_layout(saved, drafting)
        return layout if pack_linears(model, layout) else None
    layers = pack_linears(model, XEON)  # both copies, to time them
    if not layers:
        return None
    timings = time_layouts(backend, layers)
    _save(path, timings)
    layout = choose_layout(timings, drafting)
    use_layout(layers, layout)
    return layout


def layout_path(model: str, threads: int) -> Path:
    return cache_dir() / "layouts" / f"{model_stem(model)}-torch-t{threads}.json"


def _load(path: Path) -> dict[str, float] | None:
    """Saved timings, if they were taken on this CPU (a copied cache must not decide)."""
    try:
        saved = json.loads(path.read_text())
        return saved["ms"] if saved["cpu"] == cpu_name() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(path: Path, ms: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rounded = {key: round(value, 2) for key, value in ms.items()}
    path.write_text(json.dumps({"cpu": cpu_name(), "ms": rounded}, indent=1))
