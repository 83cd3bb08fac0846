"""One small registry type, used for backbones, hosts and proxies."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Generic, TypeVar

from fbseg.errors import UnknownNameError

T = TypeVar("T")


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class Registry(Generic[T]):
    """Name → entry. Registering a name twice is an error; misses suggest close names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = (
                f"did you mean {', '.join(close)}?"
                if close
                else f"known: {', '.join(self.names())}"
            )
            raise UnknownNameError(f"unknown {self.kind} {name!r}; {hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries, key=_natural_key)

    def __iter__(self) -> Iterator[tuple[str, T]]:
        return ((n, self._entries[n]) for n in self.names())
