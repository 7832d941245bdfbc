"""The warm-up runs one forward of each kind a step can make, on each model, and leaves
every cache as it found none: empty."""

from __future__ import annotations

import pytest

from adaspec.api import load
from adaspec.backends.warm import WARM_CHAIN, WARM_TREE, binary_tree, warm_paths
from adaspec.build import load_backend
from adaspec.tree import ROOT, TokenTree


def spy(backend, calls: list, name: str) -> None:
    """Record each forward's kind on the instance: (model, rows, tree or chain)."""
    forward, forward_slots = backend.forward, backend.forward_slots

    def recording(tokens, parents=None):
        calls.append((name, len(tokens), "tree" if parents is not None else "chain"))
        return forward(tokens, parents)

    def recording_slots(rows):
        calls.append((name, len(rows), "slots"))
        return forward_slots(rows)

    backend.forward, backend.forward_slots = recording, recording_slots


@pytest.mark.parametrize("slots", [1, 3])
def test_every_kind_of_forward_on_every_model(model_dir, draft_dir, slots):
    engine = load(
        str(model_dir), draft=str(draft_dir), backend="torch", drafter="model", slots=slots
    )
    assert engine.draft is not None
    calls: list = []
    spy(engine.target, calls, "target")
    spy(engine.draft, calls, "draft")
    warm_paths(engine.target, engine.draft)
    for model in ("target", "draft"):
        chains = sorted(n for m, n, kind in calls if m == model and kind == "chain")
        trees = [n for m, n, kind in calls if m == model and kind == "tree"]
        assert chains == list(range(1, WARM_CHAIN + 1)) and trees == [WARM_TREE]
    shared = [n for m, n, kind in calls if kind == "slots"]
    assert shared == ([slots] if slots > 1 else [])
    for model in (engine.target, engine.draft):
        assert all(model.slot(i).length == 0 for i in range(1, slots))
        assert model.length == 0


def test_the_warm_tree_is_a_tree():
    parents = binary_tree(WARM_TREE)
    assert parents[0] == ROOT and len(parents) == WARM_TREE
    TokenTree(tuple(range(WARM_TREE)), tuple(parents))  # checks each parent comes first


def test_a_model_without_slots_warms_alone(model_dir):
    backend = load_backend(str(model_dir), "torch")
    calls: list = []
    spy(backend, calls, "target")
    warm_paths(backend)
    assert [kind for _, _, kind in calls].count("slots") == 0 and backend.length == 0
