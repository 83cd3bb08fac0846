"""`fbseg explain`: what the model attends to at chosen points, as a PNG sheet (+ HTML)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._console import err, run_guarded
from ._options import (O, W, CheckpointOpt, DebugOpt, DeviceOpt, HostOpt, LamOpt, ModelOpt,
                       PrecisionOpt, PretrainedOpt, ProxyCheckpointOpt, ProxyOpt, QuietOpt,
                       class_list, load_segmenter)

HELP = """Show what the model attends to. For each point (--at X,Y in image pixels; default: the
most confident pixel of each class) the sheet shows the rows of the host attention A, of
FSA's feedback attention A_fb and of the final A' as heat maps over the image, the nucleus
cut and FSA's class distribution P; also the host-only and FSA masks and where they differ.
Writes PHOTO.explain.png; --html adds PHOTO.explain.html (open it from disk: hover to explore);
--save-raw adds PHOTO.explain.npz with every array behind the panels."""


def _point(text: str) -> tuple[int, int]:
    from fbseg.errors import ConfigError

    try:
        x, y = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--at takes X,Y in pixels, got {text!r}") from None
    return x, y


def explain_command(
    image: Annotated[Path, typer.Argument(help="One image.", show_default=False)],
    classes: Annotated[Optional[str], typer.Option("--classes", "-c", help='Classes, e.g. "cat,sofa; couch".')] = None,
    classes_file: Annotated[Optional[Path], typer.Option("--classes-file", help="One class per line (names split on ';').")] = None,
    at: Annotated[Optional[list[str]], typer.Option("--at", help="A query point X,Y in pixels of the image (repeatable).")] = None,
    model: ModelOpt = "ViT-B-16",
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    host: HostOpt = "proxyclip",
    proxy: ProxyOpt = "dino",
    proxy_checkpoint: ProxyCheckpointOpt = None,
    lam: LamOpt = None,
    short_side: Annotated[int, typer.Option("--short-side", help="Resize so the short side is this.", rich_help_panel=W)] = 336,
    window: Annotated[int, typer.Option("--window", help="Sliding window size.", rich_help_panel=W)] = 336,
    stride: Annotated[int, typer.Option("--stride", help="Sliding window stride.", rich_help_panel=W)] = 112,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.", rich_help_panel=O)] = Path("fbseg-out"),
    html: Annotated[bool, typer.Option("--html", help="Also write an interactive, self-contained HTML page.", rich_help_panel=O)] = False,
    save_raw: Annotated[bool, typer.Option("--save-raw", help="Also write the arrays behind every panel (.npz).", rich_help_panel=O)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rewrite existing outputs.", rich_help_panel=O)] = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    debug: DebugOpt = False,
) -> None:
    run_guarded(_run, dict(locals()))


def _run(*, image, classes, classes_file, at, model, pretrained, checkpoint, host, proxy,
         proxy_checkpoint, lam, short_side, window, stride, output, html, save_raw, overwrite,
         quiet, device, precision, debug) -> None:
    from fbseg.runs import explain_files
    from fbseg.io import read_image

    cl = class_list(classes, classes_file)
    points = [_point(p) for p in at or []]
    rgb = read_image(image)  # a bad image fails before the model loads
    targets = explain_files.output_paths(output, image, html=html, save_raw=save_raw)
    explain_files.check_free(targets, overwrite)
    seg = load_segmenter(model=model, pretrained=pretrained, checkpoint=checkpoint, host=host,
                         proxy=proxy, proxy_checkpoint=proxy_checkpoint, feedback=True, lam=lam,
                         device=device, precision=precision, show=not quiet)
    exp = seg.explain(rgb, cl, points or None, short_side=short_side, window=window, stride=stride)
    written = explain_files.write(exp, targets, title=f"{image.name} · {model} + {host}"
                                  f"{' (' + proxy + ')' if host == 'proxyclip' else ''} + FSA",
                                  overwrite=overwrite)
    if not quiet:
        for p in exp.points:
            err.print(f"point ({p.x}, {p.y}): window {p.window}, patch {p.patch}, "
                      f"cut kept {int(p.keep.sum())}/{p.keep.size}")
        err.print("wrote " + ", ".join(str(w) for w in written))
