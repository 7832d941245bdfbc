from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from adaspec.profile import CostProfile, cpu_name, measure, saved_profile
from tests.tiny import backend, tiny_model

PROFILE = CostProfile(
    model="m.gguf",
    backend="llama.cpp",
    threads=2,
    ks=[1, 2, 4, 8],
    contexts=[128, 1024],
    ms=[[50.0, 80.0, 120.0, 280.0], [60.0, 90.0, 140.0, 300.0]],
    spread_ms=[[1.0] * 4, [1.0] * 4],
)


@pytest.mark.parametrize(
    ("k", "context", "expected"),
    [
        (1, 100, 50.0),
        (4, 128, 120.0),
        (3, 128, 100.0),  # halfway between k=2 and k=4
        (6, 128, 200.0),
        (16, 128, 600.0),  # beyond the last point: the last slope continues
        (2, 900, 90.0),  # nearest measured context
    ],
)
def test_cost_interpolation(k, context, expected):
    assert PROFILE.cost_ms(k, context) == pytest.approx(expected)


def test_a_point_timed_below_a_smaller_one_costs_as_much_as_it():
    """Timed under load, 4 positions came out dearer than 8: planning must not read 8 (or
    12) as the cheaper forward."""
    noisy = replace(PROFILE, ms=[[50.0, 80.0, 300.0, 200.0]], contexts=[128])
    assert noisy.cost_ms(8, 128) == pytest.approx(300.0)
    assert noisy.cost_ms(6, 128) == pytest.approx(300.0)
    assert noisy.cost_ms(3, 128) == pytest.approx(190.0)


def test_save_and_load_round_trip(tmp_path):
    path = PROFILE.save(tmp_path / "p.json")
    assert CostProfile.load(path) == PROFILE
    assert json.loads(path.read_text())["ks"] == [1, 2, 4, 8]


def test_measure_on_a_tiny_model():
    model = backend(tiny_model(seed=0))
    profile = measure(model, ks=[1, 3], contexts=[4, 16], repeats=2)
    assert len(profile.ms) == 2 and all(len(row) == 2 for row in profile.ms)
    assert all(ms > 0 for row in profile.ms for ms in row)
    assert model.length == 16  # every timed draft was rolled back
    assert profile.cpu == cpu_name()


def test_measure_spreads_a_pass_over_slots():
    """With slots, k rows are one pass over min(k, slots) requests' caches, rows split
    evenly; every slot is left holding its context."""
    from adaspec.backends.torch_hf import TorchBackend

    model = TorchBackend(tiny_model(seed=0), None, label="tiny", slots=3)
    passes: list[list[int]] = []
    forward_slots = model.forward_slots

    def spying(rows):
        passes.append([len(tokens) for _, tokens, _ in rows])
        return forward_slots(rows)

    model.forward_slots = spying
    profile = measure(model, ks=[1, 2, 7], contexts=[4], repeats=1, slots=3)
    assert profile.slots == 3 and len(profile.ms[0]) == 3
    assert passes == [[1, 1]] * 2 + [[3, 2, 2]] * 2  # k = 1 runs on one slot: a forward
    assert [model.slot(i).length for i in range(1, 3)] == [4, 4] and model.length == 4


@pytest.mark.parametrize(("cpu", "used"), [("", True), ("this", True), ("Other CPU 9000", False)])
def test_a_saved_profile_is_used_only_on_the_cpu_it_was_timed_on(cpu, used):
    saved = replace(PROFILE, cpu=cpu_name() if cpu == "this" else cpu)
    saved.save()
    target = SimpleNamespace(label=PROFILE.model, name=PROFILE.backend, threads=PROFILE.threads)
    assert saved_profile(target) == (saved if used else None)


def test_no_saved_profile():
    assert saved_profile(SimpleNamespace(label="none.gguf", name="torch", threads=1)) is None


def test_a_profile_timed_for_shared_passes_is_kept_for_the_servers_slots():
    """`adaspec profile --slots 8` prices k rows as k requests' rows: a lone request plans
    with its own profile, a server of 8 slots with that one, else the lone one's."""
    lone, shared = replace(PROFILE, cpu=cpu_name()), replace(PROFILE, cpu=cpu_name(), slots=8)
    shared.save()
    of = lambda slots: SimpleNamespace(  # noqa: E731
        label=PROFILE.model, name=PROFILE.backend, threads=PROFILE.threads, slots=slots
    )
    assert saved_profile(of(1)) is None and saved_profile(of(8)) == shared
    lone.save()
    assert saved_profile(of(1)) == lone and saved_profile(of(4)) == lone
    assert saved_profile(of(8)) == shared
