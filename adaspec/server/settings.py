"""What the server is told at start: how it listens, queues and guards, and what model
name it answers to. The engine itself is built before (``launch.load_engine``)."""

from __future__ import annotations

from dataclasses import dataclass

from adaspec.errors import ConfigError


@dataclass(frozen=True)
class ServerSettings:
    model_id: str  # what /v1/models lists and requests name (the --target given)
    host: str = "127.0.0.1"
    port: int = 8000
    parallel: int = 1  # requests run at once (slots)
    max_queue: int = 64  # requests waiting for a slot before 429
    prefix_reuse: bool = True  # a prompt skips the prefix a free slot's cache holds
    api_keys: tuple[str, ...] = ()  # empty: /v1 is open
    max_body_bytes: int = 8 * 2**20  # a prompt that fills a long context is well under this
    drain_timeout_s: float = 60.0  # at shutdown, most time left to requests still running
    drafter: str = ""  # the --drafter and --policy asked for, which /v1/models reports
    policy: str = ""

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise ConfigError(f"--parallel must be at least 1, got {self.parallel}")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be at least 0, got {self.max_queue}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")
        if any(not key for key in self.api_keys):
            raise ConfigError("an --api-key must not be empty")
