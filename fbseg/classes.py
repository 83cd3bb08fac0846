"""The one class grammar: "," between classes, ";" between the names of one class.

A class is a tuple of names; the FSA reference's name files (one class per line, names
separated by "; ") parse with the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fbseg.errors import ConfigError

BACKGROUND = "background"


@dataclass(frozen=True)
class ClassList:
    """Classes as given (``labels``) and their names; ``names[k]`` is a tuple of strings."""

    labels: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def flat_names(self) -> list[str]:
        """Every name as its own column, class by class (what P and the KL run over)."""
        return [n for names in self.names for n in names]

    @property
    def name_to_class(self) -> list[int]:
        """For each flat name, the index of its class."""
        return [k for k, names in enumerate(self.names) for _ in names]


def _split_names(item: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in item.split(";"))
    if not item.strip() or any(not n for n in names):
        raise ConfigError(f"empty class or name in {item!r}")
    return names


def parse_classes(spec: str | Sequence[str]) -> ClassList:
    """Parse "cat,sofa; couch" or ["cat", "sofa; couch"] into a ``ClassList``.

    A string is split on "," into classes; a list gives one class per item (an item may
    hold ";"-separated names but no splitting on ","). Empty, blank or duplicate classes
    and a name repeated within a class raise ``ConfigError``.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    if not items or all(not str(i).strip() for i in items):
        raise ConfigError("no classes given")
    names = tuple(_split_names(str(item)) for item in items)
    labels = tuple(";".join(n) for n in names)
    _check_unique(names)
    return ClassList(labels=labels, names=names)


def read_class_file(path: str | Path) -> ClassList:
    """One class per line; blank lines are skipped; a name may contain a comma."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read class file {path}: {exc.__class__.__name__}") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"class file {path} has no classes")
    return parse_classes(lines)


def with_background(classes: ClassList, background_names: str) -> ClassList:
    """Prepend a class labelled "background" made of the given ";"-separated names."""
    names = _split_names(background_names)
    if BACKGROUND in classes.labels:
        raise ConfigError('a class is already labelled "background"')
    merged = ClassList(labels=(BACKGROUND, *classes.labels), names=(names, *classes.names))
    _check_unique(merged.names)
    return merged


def _check_unique(names: Sequence[tuple[str, ...]]) -> None:
    """Reject a class given twice and a name repeated inside one class.

    A name shared by two different classes is allowed: the reference's name files do it.
    """
    seen: set[tuple[str, ...]] = set()
    for group in names:
        lowered = tuple(n.lower() for n in group)
        if len(set(lowered)) != len(lowered):
            raise ConfigError(f"a name is repeated in class {';'.join(group)!r}")
        if tuple(sorted(lowered)) in seen:
            raise ConfigError(f"duplicate class {';'.join(group)!r}")
        seen.add(tuple(sorted(lowered)))
