"""One generic registry: components are found by their exact name, never by substring or folder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from vlbridge.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps exact names to factories; an unknown name raises ConfigError listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers `obj` under `name`; registering a name twice is a bug."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The factory registered as `name`."""
        if name not in self._items:
            known = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
