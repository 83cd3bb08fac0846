"""Finding the images of a run: files, folders, globs and stdin, named for their outputs."""

from __future__ import annotations

import glob
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fbseg.errors import InputError, NoInputError
from fbseg.io import read_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
RUN_SUMMARY = "summary.json"  # an input named "summary.*" keeps its suffix so it cannot clash


@dataclass(frozen=True)
class InputItem:
    """One image to segment; ``rel`` is its place under the output folder (no suffix)."""

    path: Path | None  # None: read from stdin
    rel: Path
    display: str


@dataclass
class InputScan:
    items: list[InputItem]
    skipped_non_images: int = 0
    missing: list[str] = field(default_factory=list)


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def collect_inputs(paths: Sequence[str], recursive: bool = False) -> InputScan:
    """Files, folders (``recursive`` for subfolders) and globs, sorted, duplicates removed.

    Files named explicitly are kept whatever their suffix (a bad one fails later, reported);
    inside folders only image suffixes are taken and the rest counted. Output names mirror
    the tree under each folder; two inputs that would share outputs keep their suffix.
    """
    scan = InputScan(items=[])
    found: list[tuple[Path | None, Path, str]] = []
    for raw in paths:
        if raw == "-":
            found.append((None, Path("stdin"), "<stdin>"))
            continue
        p = Path(raw)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            for f in sorted(p.glob(pattern)):
                if f.is_file():
                    if _is_image_name(f):
                        found.append((f, f.relative_to(p), str(f)))
                    else:
                        scan.skipped_non_images += 1
        elif p.exists():
            found.append((p, Path(p.name), str(p)))
        elif glob.has_magic(raw):
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=recursive))
            files = [m for m in matches if m.is_file()]
            scan.skipped_non_images += sum(1 for m in files if not _is_image_name(m))
            found.extend((m, Path(m.name), str(m)) for m in files if _is_image_name(m))
        else:
            scan.missing.append(raw)
    seen: set = set()
    unique = []
    for path, rel, display in found:
        key = path.resolve() if path is not None else "-"
        if key not in seen:
            seen.add(key)
            unique.append((path, rel, display))
    stems: dict[Path, int] = {}
    for _, rel, _ in unique:
        stems[rel.with_suffix("")] = stems.get(rel.with_suffix(""), 0) + 1
    for path, rel, display in unique:
        stem = rel.with_suffix("")
        clash = stems[stem] > 1 or (stem == Path(RUN_SUMMARY).with_suffix(""))
        scan.items.append(InputItem(path, rel if clash else stem, display))
    return scan


def read_input(item: InputItem, stdin_reader: Callable[[], bytes] | None = None) -> np.ndarray:
    if item.path is None:
        data = stdin_reader() if stdin_reader else b""
        if not data:
            raise InputError("<stdin>: no data")
        try:
            return read_image(Image.open(io.BytesIO(data)))
        except (OSError, SyntaxError, ValueError):
            raise InputError("<stdin>: not an image") from None
    return read_image(item.path)


def check_inputs(scan: InputScan) -> None:
    if not scan.items:
        where = f": {', '.join(scan.missing)}" if scan.missing else ""
        raise NoInputError(f"no input image matched{where}")
