"""Where ``fbseg explain`` writes, and writing it (atomically, never over a user's file)."""

from __future__ import annotations

from pathlib import Path

from fbseg.errors import OutputError
from fbseg.io import atomic_write_bytes, check_writable_folder
from fbseg.npz import npz_bytes
from fbseg.viz import png_bytes


def output_paths(out_dir: Path, image: Path, *, html: bool, save_raw: bool) -> dict[str, Path]:
    base = Path(out_dir) / Path(image).stem
    paths = {"sheet": base.with_name(base.name + ".explain.png")}
    if html:
        paths["html"] = base.with_name(base.name + ".explain.html")
    if save_raw:
        paths["raw"] = base.with_name(base.name + ".explain.npz")
    return paths


def check_free(paths: dict[str, Path], overwrite: bool) -> None:
    """Fail before any work when an output exists and ``overwrite`` is off, or when its
    folder cannot be written into."""
    taken = [p for p in paths.values() if p.exists()]
    if taken and not overwrite:
        raise OutputError(f"{taken[0]}: exists (use --overwrite)")
    for folder in dict.fromkeys(p.parent for p in paths.values()):
        check_writable_folder(folder)


def write(exp, paths: dict[str, Path], *, title: str, overwrite: bool) -> list[Path]:
    from fbseg.viz.page import explain_html
    from fbseg.viz.sheet import explain_sheet

    files = {"sheet": png_bytes(explain_sheet(exp, title))}
    if "html" in paths:
        files["html"] = explain_html(exp, title).encode("utf-8")
    if "raw" in paths:
        files["raw"] = npz_bytes(exp.arrays())
    for kind, data in files.items():
        atomic_write_bytes(paths[kind], data, overwrite=overwrite)
    return [paths[k] for k in files]
