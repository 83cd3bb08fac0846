"""The run summary: one plain entry per image (it may travel between ranks) and
``summary.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fbseg.io import atomic_write_bytes
from fbseg.runs.inputs import RUN_SUMMARY
from fbseg.runs.stream import ItemOutcome, ItemStatus


def summary_entry(o: ItemOutcome) -> dict:
    """One image's line in ``summary.json`` (plain data: it may travel between processes)."""
    return {
        "input": o.item.display,
        "status": o.status.value,
        "reason": o.reason or None,
        "outputs": o.outputs,
        "seconds": round(o.seconds, 4),
        "pixel_fractions": (
            {c.label: c.pixel_fraction for c in o.digest.classes} if o.digest is not None else None
        ),
    }


def run_summary(entries: Sequence[dict]) -> dict:
    counts = {s.value: sum(e["status"] == s.value for e in entries) for s in ItemStatus}
    return {"schema_version": 1, **counts, "images": list(entries)}


def write_run_summary(entries: Sequence[dict], out_dir: Path) -> Path:
    path = out_dir / RUN_SUMMARY
    atomic_write_bytes(
        path, (json.dumps(run_summary(entries), indent=2) + "\n").encode(), overwrite=True
    )
    return path
