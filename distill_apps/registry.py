"""A tiny named registry shared by methods, datasets, models and decoders (timm-style)."""
from __future__ import annotations

import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise :class:`ConfigError` listing the known ones."""

    def __init__(self, kind: str) -> None:
        """An empty registry of ``kind`` (the word used in error messages)."""
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers an object under ``name`` (case-insensitive); a second, different object under the
        same name is a ConfigError."""
        def deco(obj: T) -> T:
            """Register ``obj`` and return it unchanged."""
            key = name.lower()
            if key in self._items and self._items[key] is not obj:
                raise ConfigError(f"{self.kind} {name!r} is registered twice; pick another name.")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name is a ConfigError listing the known ones."""
        key = str(name).lower()
        if key not in self._items:
            known = ", ".join(sorted(self._items))
            raise ConfigError(f"Unknown {self.kind} {name!r}. Known {self.kind}s: {known}.")
        return self._items[key]

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching the glob ``pattern``."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern.lower()))

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered (case-insensitive)."""
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        """Iterate over the registered names, sorted."""
        return iter(self.names())

    def __repr__(self) -> str:
        from .reprs import one_line

        return one_line("Registry", [f"{len(self._items)} {self.kind}s", ", ".join(self.names())])
