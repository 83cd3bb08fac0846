"""`fbseg segment`: flags → config and options → ``segment_folder`` → progress and report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ._console import err, fail, guarded, progress_bar, stdout_line
from ._options import (
    OUTPUT,
    BatchOpt,
    CheckpointOpt,
    ClassesFileOpt,
    ClassesOpt,
    CudaGraphsOpt,
    DebugOpt,
    DeviceOpt,
    EngineOpt,
    FeedbackOpt,
    HostOpt,
    LamOpt,
    LogitScaleOpt,
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
    engine_of,
    load_engine,
    preset_and_config,
    say_names_to_encode,
)

HELP = """Segment images with free-text classes.

Writes PHOTO.mask.png (indexed PNG, pixel = class index), PHOTO.json (per-class summary) and,
with --overlay, PHOTO.overlay.png into the output folder. Classes: "," between classes, ";"
between the names of one class, e.g. "cat,sofa; couch,floor". PATH may be files, folders,
globs or - (stdin). Weights are downloaded at first use and the network is built as the
pretrained tag declares (QuickGELU for openai). --checkpoint takes a local file: a state dict
of open_clip.create_model(MODEL), with --pretrained TAG when it is a copy of that tag's
weights, or one of OpenAI's original TorchScript .pt files."""


def _mask_modes() -> str:
    from fbseg.runs.outputs import MaskMode

    return " | ".join(m.value for m in MaskMode)


def segment(
    paths: Annotated[
        list[str],
        typer.Argument(help="Images, folders, globs, or - for stdin.", show_default=False),
    ],
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    background: Annotated[
        Optional[str],
        typer.Option(
            "--background", help="';'-separated names of a 'background' class prepended as label 0."
        ),
    ] = None,
    background_threshold: Annotated[
        Optional[float],
        typer.Option(
            "--background-threshold",
            help="Pixels whose top probability is below this become background.",
        ),
    ] = None,
    engine: EngineOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    host: HostOpt = None,
    proxy: ProxyOpt = None,
    proxy_checkpoint: ProxyCheckpointOpt = None,
    feedback: FeedbackOpt = None,
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
    overlay: Annotated[
        bool,
        typer.Option(
            "--overlay", help="Also write PHOTO.overlay.png with a legend.", rich_help_panel=OUTPUT
        ),
    ] = False,
    opacity: Annotated[
        float,
        typer.Option(
            "--opacity", min=0.0, max=1.0, help="Overlay opacity.", rich_help_panel=OUTPUT
        ),
    ] = 0.5,
    save_probs: Annotated[
        bool,
        typer.Option(
            "--save-probs",
            help="Also write per-class probabilities (float16 .npz).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    masks: Annotated[
        str,
        typer.Option(
            "--masks",
            help=f"{_mask_modes()}: the indexed PNG (pixel = class), or also one binary PNG per class.",
            rich_help_panel=OUTPUT,
        ),
    ] = "indexed",
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Also write the host-only mask and a diff image; the JSON gains the per-class change.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
    recursive: Annotated[
        bool,
        typer.Option("--recursive", "-r", help="Descend into subfolders.", rich_help_panel=OUTPUT),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print each image's summary as one JSON line on stdout.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_images: BatchOpt = None,
    cuda_graphs: CudaGraphsOpt = None,
    debug: DebugOpt = False,
) -> None:
    flags = dict(locals())
    with guarded(debug):
        from fbseg.errors import ConfigError
        from fbseg.runs import distributed
        from fbseg.runs.folder import check_run, scan_inputs, segment_folder
        from fbseg.runs.outputs import MaskMode, OutputOptions
        from fbseg.runs.stream import ItemStatus

        cl = class_list(classes, classes_file, background, background_threshold)
        engine_name = engine_of(flags)
        _, config = preset_and_config(flags)
        config = config.with_flags(prob_threshold=background_threshold)
        try:
            mask_mode = MaskMode(masks)
        except ValueError:
            raise ConfigError(
                f"unknown --masks {masks!r}; use {' or '.join(m.value for m in MaskMode)}"
            ) from None
        options = OutputOptions(
            out_dir=output,
            overlay=overlay,
            opacity=opacity,
            overwrite=overwrite,
            save_probs=save_probs,
            masks=mask_mode,
            class_labels=cl.labels,
            compare=compare,
        )
        check_run(options, config)
        scan = scan_inputs(paths, recursive)  # nothing to do fails before the model loads
        if any(i.path is None for i in scan.items) and sys.stdin.isatty():
            raise ConfigError("- reads an image from stdin, but stdin is a terminal")
        dist = distributed.from_environment()
        show = not quiet and dist.is_main
        seg = load_engine(engine_name, flags, config, show=show, device=dist.device_for(device))
        say_names_to_encode(seg, cl, show=show)
        progress = progress_bar(show and len(dist.shard(scan.items)) > 1)
        with progress:
            task = progress.add_task("segmenting", total=len(dist.shard(scan.items)))

            def finished(outcome) -> None:
                progress.update(task, advance=1, description=outcome.item.display[-40:])
                if outcome.status is ItemStatus.FAILED:  # an error is reported even with -q
                    progress.console.print(
                        f"[red]failed:[/red] {escape(outcome.reason)}", soft_wrap=True
                    )
                elif outcome.status is ItemStatus.SKIPPED and show:
                    progress.console.print(
                        f"skipped {outcome.item.display}: outputs exist (--overwrite to redo)"
                    )
                if as_json and outcome.result is not None:
                    line = outcome.result.to_json()
                    line["input"], line["outputs"] = outcome.item.display, outcome.outputs
                    stdout_line(json.dumps(line))

            run = segment_folder(
                seg,
                scan,
                cl,
                options,
                images_per_group=batch_images,
                stdin_reader=sys.stdin.buffer.read,
                dist=dist,
                on_outcome=finished,
            )
        if run.interrupted:
            fail(
                f"interrupted: {run.done_here} of {run.planned} images done; rerun to resume",
                run.exit_code,
            )
        distributed.shutdown()
        if show:
            _report(run)
        if run.exit_code:
            raise typer.Exit(run.exit_code)


def _report(run) -> None:
    """One image: its class table. Several: counts and every failure (all ranks' entries)."""
    from rich.table import Table

    from fbseg.runs.stream import ItemStatus

    done = [o for o in run.outcomes if o.status is ItemStatus.DONE]
    if len(run.entries) == 1 and len(run.outcomes) == 1 and done:
        r = done[0].digest
        t = Table(
            title=f"{done[0].item.display}  ({r.image_size[1]}×{r.image_size[0]}, "
            f"{r.meta['timings']['total_s']:.2f} s)"
        )
        for col in ("#", "class", "pixels %", "mean conf", "max conf"):
            t.add_column(col, justify="right" if col != "class" else "left")
        for s in r.classes:
            t.add_row(
                str(s.index),
                s.label,
                f"{100 * s.pixel_fraction:.1f}",
                f"{s.mean_confidence:.3f}",
                f"{s.max_confidence:.3f}",
            )
        err.print(t)
        err.print("wrote " + ", ".join(done[0].outputs.values()))
        return
    if len(run.entries) == 1:
        return  # its one line was printed as it happened
    counts = {s: run.count(s) for s in ItemStatus}
    extra = f", {run.skipped_non_images} non-images ignored" if run.skipped_non_images else ""
    err.print(
        f"processed {counts[ItemStatus.DONE]}, skipped {counts[ItemStatus.SKIPPED]}, "
        f"failed {counts[ItemStatus.FAILED]}{extra}"
    )
    for e in run.entries:
        if e["status"] == ItemStatus.FAILED.value:
            err.print(f"  [red]✗[/red] {escape(e['reason'])}", soft_wrap=True)
