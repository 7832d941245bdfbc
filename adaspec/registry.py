"""One registry per extension point (name -> class), used by the CLI and the bench alike.

A new method registers itself with a decorator; nothing else needs to know its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from adaspec.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Add a class under ``name``; the class's ``name`` attribute becomes that name, so
        an instance can say what it is registered as (a policy's plan per drafter is keyed
        by it)."""

        def add(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return add

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._entries)
