"""What a run writes for one image: output names, the files' bytes, atomic writing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from fbseg.io import atomic_write_bytes, remove_stale_temporaries
from fbseg.npz import npz_bytes
from fbseg.result import SegmentationResult
from fbseg.runs.inputs import InputItem
from fbseg.viz import binary_png, disagreement, indexed_png, overlay, palette, png_bytes
from fbseg.viz.png import rgb_png


class MaskMode(str, Enum):
    """--masks: the indexed PNG alone, or also one binary PNG per class."""

    INDEXED = "indexed"
    PER_CLASS = "per-class"


@dataclass(frozen=True)
class OutputOptions:
    """What to write for each image. ``masks=MaskMode.PER_CLASS`` adds one binary PNG per class
    (named after ``class_labels``) beside the indexed mask."""

    out_dir: Path
    overlay: bool = False
    opacity: float = 0.5
    overwrite: bool = False
    save_probs: bool = False
    masks: MaskMode = MaskMode.INDEXED
    class_labels: tuple[str, ...] = ()
    compare: bool = False  # also the host-only mask and a diff image


def label_slug(label: str) -> str:
    """A file-name-safe form of a class label: "sofa; couch" → "sofa-couch"."""
    slug = re.sub(r"[^0-9a-z]+", "-", label.lower()).strip("-")
    return slug[:40] or "class"


def output_paths(item: InputItem, opts: OutputOptions) -> dict[str, Path]:
    base = opts.out_dir / item.rel
    paths = {
        "mask": base.parent / (base.name + ".mask.png"),
        "json": base.parent / (base.name + ".json"),
    }
    if opts.overlay:
        paths["overlay"] = base.parent / (base.name + ".overlay.png")
    if opts.save_probs:
        paths["probs"] = base.parent / (base.name + ".probs.npz")
    if opts.compare:
        paths["baseline"] = base.parent / (base.name + ".baseline.png")
        paths["diff"] = base.parent / (base.name + ".diff.png")
    if opts.masks is MaskMode.PER_CLASS:
        folder = base.parent / (base.name + ".masks")
        for k, label in enumerate(opts.class_labels):
            paths[f"mask:{k}"] = folder / f"{k:02d}-{label_slug(label)}.png"
    return paths


def render_outputs(
    result: SegmentationResult, rgb: np.ndarray, item: InputItem, opts: OutputOptions
) -> dict[str, bytes]:
    """The bytes of every output file of one image (nothing written yet)."""
    colours = palette(len(result.classes))
    classes = result.summary()  # once: the JSON and the overlay's legend both use it
    summary = result.to_json(classes)
    summary["input"] = item.display
    summary["palette"] = colours.tolist()
    out = {
        "mask": indexed_png(result.compact_labels, colours),
        "json": (json.dumps(summary, indent=2) + "\n").encode(),
    }
    if opts.overlay:
        fractions = [c.pixel_fraction for c in classes]
        out["overlay"] = png_bytes(
            overlay(
                rgb,
                result.compact_labels,
                colours,
                opts.opacity,
                legend=list(result.classes),
                fractions=fractions,
            ),
            fast=True,
        )
    if opts.save_probs:
        out["probs"] = npz_bytes(
            {"probs": result.probs_float16, "classes": np.array(result.classes)}
        )
    baseline = result.compact_baseline_labels
    if opts.compare and baseline is not None:
        labels = result.compact_labels
        out["baseline"] = indexed_png(baseline, colours)
        out["diff"] = rgb_png(disagreement(rgb, baseline, labels))
    if opts.masks is MaskMode.PER_CLASS:
        empty = None  # every absent class has the same all-black mask: encoded once
        labels = result.compact_labels
        for k, summary in enumerate(classes):
            if summary.pixel_fraction > 0:
                out[f"mask:{k}"] = binary_png(labels == k)
            else:
                empty = empty or binary_png(np.zeros(result.image_size, dtype=bool))
                out[f"mask:{k}"] = empty
    return out


def write_outputs(files: dict[str, bytes], paths: dict[str, Path], overwrite: bool) -> None:
    """Write each file atomically; the JSON last, so its presence means the image is done.
    A file that a killed run did finish holds the same bytes and counts as written (the
    temporaries it left go when a run starts: ``remove_stale_outputs``)."""
    for kind in sorted(files, key=lambda k: k == "json"):
        atomic_write_bytes(paths[kind], files[kind], overwrite=overwrite)


def remove_stale_outputs(items: Iterable[InputItem], opts: OutputOptions) -> int:
    """Delete the temporaries a killed run left for the outputs of ``items`` (before any
    writer starts: none of them is this run's own); each output folder is listed once."""
    return remove_stale_temporaries(
        path for item in items for path in output_paths(item, opts).values()
    )
