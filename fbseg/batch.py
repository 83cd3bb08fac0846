"""Many inputs, one model: finding images, naming outputs, writing them, keeping going."""
from __future__ import annotations

import glob
import json

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, NoInputError, OutputError
from .io import atomic_write_bytes, read_image
from .result import SegmentationResult
from .viz import indexed_png, overlay, palette, png_bytes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
RUN_SUMMARY = "summary.json"


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


@dataclass(frozen=True)
class OutputOptions:
    out_dir: Path
    overlay: bool = False
    opacity: float = 0.5
    overwrite: bool = False
    save_probs: bool = False


def output_paths(item: InputItem, opts: OutputOptions) -> dict[str, Path]:
    base = opts.out_dir / item.rel
    paths = {"mask": base.parent / (base.name + ".mask.png"), "json": base.parent / (base.name + ".json")}
    if opts.overlay:
        paths["overlay"] = base.parent / (base.name + ".overlay.png")
    if opts.save_probs:
        paths["probs"] = base.parent / (base.name + ".probs.npz")
    return paths


def render_outputs(result: SegmentationResult, rgb: np.ndarray, item: InputItem,
                   opts: OutputOptions) -> dict[str, bytes]:
    """The bytes of every output file of one image (nothing written yet)."""
    colours = palette(len(result.classes))
    summary = result.to_json()
    summary["input"] = item.display
    summary["palette"] = colours.tolist()
    out = {"mask": indexed_png(result.labels, colours),
           "json": (json.dumps(summary, indent=2) + "\n").encode()}
    if opts.overlay:
        fractions = [c.pixel_fraction for c in result.summary()]
        out["overlay"] = png_bytes(overlay(rgb, result.labels, colours, opts.opacity,
                                           legend=list(result.classes), fractions=fractions))
    if opts.save_probs:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, probs=result.probs.astype(np.float16),
                            classes=np.array(result.classes))
        out["probs"] = buf.getvalue()
    return out


def write_outputs(files: dict[str, bytes], paths: dict[str, Path], overwrite: bool) -> None:
    """Write each file atomically; the JSON last, so its presence means the image is done."""
    for kind in sorted(files, key=lambda k: k == "json"):
        atomic_write_bytes(paths[kind], files[kind], overwrite=overwrite)


@dataclass
class ItemOutcome:
    item: InputItem
    status: str  # "done", "skipped", "failed"
    reason: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    result: SegmentationResult | None = None
    seconds: float = 0.0


def read_input(item: InputItem, stdin_reader: Callable[[], bytes] | None = None) -> np.ndarray:
    if item.path is None:
        import io

        data = stdin_reader() if stdin_reader else b""
        if not data:
            raise InputError("<stdin>: no data")
        from PIL import Image

        try:
            return read_image(Image.open(io.BytesIO(data)))
        except (OSError, SyntaxError, ValueError):
            raise InputError("<stdin>: not an image") from None
    return read_image(item.path)


def run_items(
    items: Sequence[InputItem],
    segment: Callable[[np.ndarray], SegmentationResult],
    opts: OutputOptions,
    stdin_reader: Callable[[], bytes] | None = None,
) -> Iterator[ItemOutcome]:
    """Segment and write each item; a bad item is reported and the run goes on.

    An item whose outputs all exist is skipped unless ``opts.overwrite``.
    """
    for item in items:
        t0 = time.perf_counter()
        paths = output_paths(item, opts)
        if not opts.overwrite and all(p.exists() for p in paths.values()):
            yield ItemOutcome(item, "skipped", "outputs exist",
                              {k: str(p) for k, p in paths.items()})
            continue
        try:
            rgb = read_input(item, stdin_reader)
            result = segment(rgb)
            write_outputs(render_outputs(result, rgb, item, opts), paths, opts.overwrite)
        except (InputError, OutputError) as exc:
            yield ItemOutcome(item, "failed", exc.one_line(), seconds=time.perf_counter() - t0)
            continue
        yield ItemOutcome(item, "done", "", {k: str(p) for k, p in paths.items()}, result,
                          time.perf_counter() - t0)


def run_summary(outcomes: Sequence[ItemOutcome]) -> dict:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    return {
        "schema_version": 1,
        **counts,
        "images": [
            {"input": o.item.display, "status": o.status, "reason": o.reason or None,
             "outputs": o.outputs, "seconds": round(o.seconds, 4),
             "pixel_fractions": ({c.label: c.pixel_fraction for c in o.result.summary()}
                                 if o.result is not None else None)}
            for o in outcomes
        ],
    }


def write_run_summary(outcomes: Sequence[ItemOutcome], out_dir: Path) -> Path:
    path = out_dir / RUN_SUMMARY
    atomic_write_bytes(path, (json.dumps(run_summary(outcomes), indent=2) + "\n").encode(),
                       overwrite=True)
    return path


def check_inputs(scan: InputScan) -> None:
    if not scan.items:
        where = f": {', '.join(scan.missing)}" if scan.missing else ""
        raise NoInputError(f"no input image matched{where}")


__all__ = [
    "InputItem", "InputScan", "OutputOptions", "ItemOutcome", "collect_inputs", "output_paths",
    "run_items", "run_summary", "write_run_summary", "check_inputs",
]
