"""Many inputs, one model: finding images, naming outputs, writing them, keeping going."""
from __future__ import annotations

import glob
import io
import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fbseg.errors import InputError, NoInputError, OutputError
from fbseg.io import atomic_write_bytes, read_image, remove_stale_temporaries
from fbseg.result import SegmentationResult
from fbseg.viz import binary_png, disagreement, indexed_png, overlay, palette, png_bytes

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


MASK_MODES = ("indexed", "per-class")


@dataclass(frozen=True)
class OutputOptions:
    """What to write for each image. ``masks="per-class"`` adds one binary PNG per class
    (named after ``class_labels``) beside the indexed mask."""

    out_dir: Path
    overlay: bool = False
    opacity: float = 0.5
    overwrite: bool = False
    save_probs: bool = False
    masks: str = "indexed"
    class_labels: tuple[str, ...] = ()
    compare: bool = False  # also the host-only mask and a diff image


def label_slug(label: str) -> str:
    """A file-name-safe form of a class label: "sofa; couch" → "sofa-couch"."""
    slug = re.sub(r"[^0-9a-z]+", "-", label.lower()).strip("-")
    return slug[:40] or "class"


def output_paths(item: InputItem, opts: OutputOptions) -> dict[str, Path]:
    base = opts.out_dir / item.rel
    paths = {"mask": base.parent / (base.name + ".mask.png"), "json": base.parent / (base.name + ".json")}
    if opts.overlay:
        paths["overlay"] = base.parent / (base.name + ".overlay.png")
    if opts.save_probs:
        paths["probs"] = base.parent / (base.name + ".probs.npz")
    if opts.compare:
        paths["baseline"] = base.parent / (base.name + ".baseline.png")
        paths["diff"] = base.parent / (base.name + ".diff.png")
    if opts.masks == "per-class":
        folder = base.parent / (base.name + ".masks")
        for k, label in enumerate(opts.class_labels):
            paths[f"mask:{k}"] = folder / f"{k:02d}-{label_slug(label)}.png"
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
        buf = io.BytesIO()
        np.savez_compressed(buf, probs=result.probs.astype(np.float16),
                            classes=np.array(result.classes))
        out["probs"] = buf.getvalue()
    if opts.compare and result.baseline_labels is not None:
        out["baseline"] = indexed_png(result.baseline_labels, colours)
        out["diff"] = png_bytes(Image.fromarray(disagreement(rgb, result.baseline_labels,
                                                             result.labels)))
    if opts.masks == "per-class":
        for k in range(len(result.classes)):
            out[f"mask:{k}"] = binary_png(result.labels == k)
    return out


def write_outputs(files: dict[str, bytes], paths: dict[str, Path], overwrite: bool) -> None:
    """Write each file atomically; the JSON last, so its presence means the image is done.
    Temporaries a killed run left for these names are removed first; a file that a killed
    run did finish holds the same bytes and counts as written."""
    for kind in sorted(files, key=lambda k: k == "json"):
        remove_stale_temporaries(paths[kind])
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
        data = stdin_reader() if stdin_reader else b""
        if not data:
            raise InputError("<stdin>: no data")
        try:
            return read_image(Image.open(io.BytesIO(data)))
        except (OSError, SyntaxError, ValueError):
            raise InputError("<stdin>: not an image") from None
    return read_image(item.path)


@dataclass
class _Loaded:
    """An item after the reader thread: decoded and prepared, or already decided."""

    item: InputItem
    paths: dict[str, Path]
    rgb: np.ndarray | None = None
    payload: object = None
    outcome: ItemOutcome | None = None  # skipped / failed before the model
    write: Future | None = None


_END = object()


def _reader(items: Sequence[InputItem], opts: OutputOptions, prepare: Callable[[np.ndarray], object],
            stdin_reader: Callable[[], bytes] | None, out: queue.Queue, stop: threading.Event) -> None:
    """Decode and prepare items ahead of the model, in order, into the bounded queue."""

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                out.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    for item in items:
        if stop.is_set():
            return
        paths = output_paths(item, opts)
        entry = _Loaded(item, paths)
        if not opts.overwrite and all(p.exists() for p in paths.values()):
            entry.outcome = ItemOutcome(item, "skipped", "outputs exist",
                                        {k: str(p) for k, p in paths.items()})
        else:
            try:
                entry.rgb = read_input(item, stdin_reader)
                entry.payload = prepare(entry.rgb)
            except InputError as exc:
                entry.outcome = ItemOutcome(item, "failed", exc.one_line())
            except Exception as exc:  # never let one file stop the run
                entry.outcome = ItemOutcome(item, "failed", f"{item.display}: cannot read ({exc})")
        if not put(entry):
            return
    put(_END)


def _write(entry: _Loaded, result: SegmentationResult, opts: OutputOptions) -> ItemOutcome:
    t0 = time.perf_counter()
    try:
        write_outputs(render_outputs(result, entry.rgb, entry.item, opts), entry.paths,
                      opts.overwrite)
    except OutputError as exc:
        return ItemOutcome(entry.item, "failed", exc.one_line())
    seconds = result.meta.get("timings", {}).get("total_s", 0.0) + time.perf_counter() - t0
    return ItemOutcome(entry.item, "done", "", {k: str(p) for k, p in entry.paths.items()},
                       result, seconds)


def run_items(
    items: Sequence[InputItem],
    segment_batch: Callable[[list], list[SegmentationResult]],
    opts: OutputOptions,
    stdin_reader: Callable[[], bytes] | None = None,
    *,
    prepare: Callable[[np.ndarray], object] = lambda rgb: rgb,
    group_size: int = 1,
    prefetch: int = 4,
) -> Iterator[ItemOutcome]:
    """Segment and write each item, in order; a bad item is reported and the run goes on.

    Three stages overlap: a reader thread decodes and ``prepare``s up to ``prefetch`` items
    ahead, the caller's thread runs ``segment_batch`` on groups of ``group_size`` prepared
    images, and a writer thread renders and writes outputs. An item whose outputs all exist
    is skipped unless ``opts.overwrite``. On KeyboardInterrupt the writes already started are
    finished and reported, then KeyboardInterrupt is raised again.
    """
    loaded: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    reader = threading.Thread(target=_reader, daemon=True,
                              args=(items, opts, prepare, stdin_reader, loaded, stop))
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fbseg-write")
    in_flight: list[_Loaded] = []

    def finished(entry: _Loaded) -> ItemOutcome:
        return entry.outcome if entry.write is None else entry.write.result()

    reader.start()
    interrupted = False
    try:
        ended = False
        while not ended:
            group: list[_Loaded] = []
            while sum(e.outcome is None for e in group) < group_size:
                entry = loaded.get()
                if entry is _END:
                    ended = True
                    break
                group.append(entry)
            todo = [e for e in group if e.outcome is None]
            if todo:
                results = segment_batch([e.payload for e in todo])
                for entry, result in zip(todo, results):
                    entry.payload = None  # free the prepared tensor early
                    entry.write = writer.submit(_write, entry, result, opts)
            while in_flight:  # the previous group's writes ran while the model worked
                yield finished(in_flight.pop(0))
            in_flight = group
        while in_flight:
            yield finished(in_flight.pop(0))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        writer.shutdown(wait=True)
    if interrupted:
        for entry in in_flight:
            if entry.write is not None:
                yield entry.write.result()
        raise KeyboardInterrupt


def summary_entry(o: ItemOutcome) -> dict:
    """One image's line in ``summary.json`` (plain data: it may travel between processes)."""
    return {"input": o.item.display, "status": o.status, "reason": o.reason or None,
            "outputs": o.outputs, "seconds": round(o.seconds, 4),
            "pixel_fractions": ({c.label: c.pixel_fraction for c in o.result.summary()}
                                if o.result is not None else None)}


def run_summary(entries: Sequence[dict]) -> dict:
    counts = {s: sum(e["status"] == s for e in entries) for s in ("done", "skipped", "failed")}
    return {"schema_version": 1, **counts, "images": list(entries)}


def write_run_summary(entries: Sequence[dict], out_dir: Path) -> Path:
    path = out_dir / RUN_SUMMARY
    atomic_write_bytes(path, (json.dumps(run_summary(entries), indent=2) + "\n").encode(),
                       overwrite=True)
    return path


def check_inputs(scan: InputScan) -> None:
    if not scan.items:
        where = f": {', '.join(scan.missing)}" if scan.missing else ""
        raise NoInputError(f"no input image matched{where}")


__all__ = [
    "InputItem", "InputScan", "OutputOptions", "MASK_MODES", "label_slug", "ItemOutcome", "collect_inputs", "output_paths",
    "run_items", "summary_entry", "run_summary", "write_run_summary", "check_inputs",
]
