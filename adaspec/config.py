"""Request-level settings, validated when constructed so bad values fail early."""

from __future__ import annotations

from dataclasses import dataclass, field

from adaspec.errors import ConfigError


@dataclass(frozen=True)
class SamplingParams:
    """How a token is chosen from logits; applied identically to target and draft.

    ``temperature == 0`` means greedy decoding (argmax); top-k and top-p are then unused.
    """

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filtering
    top_p: float = 1.0  # 1.0 = no nucleus filtering

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top-k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationConfig:
    """What one request asks for; mirrors the common arguments of HF ``generate()``."""

    max_new_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None  # None: a fresh random seed per request
    stop_at_eos: bool = True
    speculate: bool = True  # False: plain decoding for this request (a side-by-side check)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max-new-tokens must be >= 1, got {self.max_new_tokens}")
