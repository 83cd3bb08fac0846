"""`fbseg explain`: what the model attends to at chosen points, as a PNG sheet (+ HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._console import err, guarded
from ._options import (
    OUTPUT,
    CheckpointOpt,
    ClassesFileOpt,
    ClassesOpt,
    DebugOpt,
    DeviceOpt,
    HostOpt,
    LamOpt,
    LogitScaleOpt,
    ModelChoice,
    ModelOpt,
    OutputOpt,
    OverwriteOpt,
    PamrDilationsOpt,
    PamrStepsOpt,
    PrecisionOpt,
    PresetOpt,
    PretrainedOpt,
    ProxyCheckpointOpt,
    ProxyOpt,
    QuietOpt,
    RefineOpt,
    ShortSideOpt,
    StrideOpt,
    WindowOpt,
    class_list,
    load_segmenter,
    preset_and_config,
    say_names_to_encode,
)

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
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    at: Annotated[
        Optional[list[str]],
        typer.Option("--at", help="A query point X,Y in pixels of the image (repeatable)."),
    ] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    host: HostOpt = None,
    proxy: ProxyOpt = None,
    proxy_checkpoint: ProxyCheckpointOpt = None,
    lam: LamOpt = None,
    short_side: ShortSideOpt = None,
    window: WindowOpt = None,
    stride: StrideOpt = None,
    logit_scale: LogitScaleOpt = None,
    preset: PresetOpt = None,
    refine: RefineOpt = None,
    pamr_steps: PamrStepsOpt = None,
    pamr_dilations: PamrDilationsOpt = None,
    output: OutputOpt = Path("fbseg-out"),
    html: Annotated[
        bool,
        typer.Option(
            "--html",
            help="Also write an interactive, self-contained HTML page.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    save_raw: Annotated[
        bool,
        typer.Option(
            "--save-raw",
            help="Also write the arrays behind every panel (.npz).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    debug: DebugOpt = False,
) -> None:
    flags = dict(locals())
    with guarded(debug):
        from fbseg.io import read_image
        from fbseg.pipeline.explain import check_points
        from fbseg.runs import explain_files

        cl = class_list(classes, classes_file)
        preset, config = preset_and_config(flags)
        config = config.replace(feedback=True)  # FSA is what is explained
        points = [_point(p) for p in at or []]
        rgb = read_image(image)  # a bad image or point fails before the model loads
        check_points(points, rgb.shape[:2])
        targets = explain_files.output_paths(output, image, html=html, save_raw=save_raw)
        explain_files.check_free(targets, overwrite)
        choice = ModelChoice.from_flags(flags, preset)
        seg = load_segmenter(choice, config, show=not quiet)
        say_names_to_encode(seg, cl, show=not quiet)
        exp = seg.explain(rgb, cl, points or None)
        written = explain_files.write(
            exp, targets, title=f"{image.name} · {choice.label()} + FSA", overwrite=overwrite
        )
        if not quiet:
            for p in exp.points:
                err.print(
                    f"point ({p.x}, {p.y}): window {p.window}, patch {p.patch}, "
                    f"cut kept {int(p.keep.sum())}/{p.keep.size}"
                )
            err.print("wrote " + ", ".join(str(w) for w in written))
