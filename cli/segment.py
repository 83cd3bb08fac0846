"""`fbseg segment`: parse options, build the Segmenter, run the batch, report."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._console import err, fail, progress_bar, run_guarded, stdout_line
from ._options import (M, O, P, W, CheckpointOpt, DebugOpt, DeviceOpt, FeedbackOpt, HostOpt, LamOpt,
                       ModelOpt, PrecisionOpt, PretrainedOpt, ProxyCheckpointOpt, ProxyOpt, QuietOpt,
                       class_list, load_segmenter)

HELP = """Segment images with free-text classes.

Writes PHOTO.mask.png (indexed PNG, pixel = class index), PHOTO.json (per-class summary) and,
with --overlay, PHOTO.overlay.png into the output folder. Classes: "," between classes, ";"
between the names of one class, e.g. "cat,sofa; couch,floor". PATH may be files, folders,
globs or - (stdin). Weights are downloaded at first use and the network is built as the
pretrained tag declares (QuickGELU for openai). --checkpoint takes a local file: a state dict
of open_clip.create_model(MODEL), with --pretrained TAG when it is a copy of that tag's
weights, or one of OpenAI's original TorchScript .pt files."""


def segment(
    paths: Annotated[list[str], typer.Argument(help="Images, folders, globs, or - for stdin.",
                                               show_default=False)],
    classes: Annotated[Optional[str], typer.Option("--classes", "-c", help='Classes, e.g. "cat,sofa; couch".')] = None,
    classes_file: Annotated[Optional[Path], typer.Option("--classes-file", help="One class per line (names split on ';').")] = None,
    background: Annotated[Optional[str], typer.Option("--background", help="';'-separated names of a 'background' class prepended as label 0.")] = None,
    background_threshold: Annotated[Optional[float], typer.Option("--background-threshold", help="Pixels whose top probability is below this become background.")] = None,
    model: ModelOpt = "ViT-B-16",
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    host: HostOpt = "proxyclip",
    proxy: ProxyOpt = "dino",
    proxy_checkpoint: ProxyCheckpointOpt = None,
    feedback: FeedbackOpt = True,
    lam: LamOpt = None,
    short_side: Annotated[int, typer.Option("--short-side", help="Resize so the short side is this (long side ≤ 2048).", rich_help_panel=W)] = 336,
    window: Annotated[int, typer.Option("--window", help="Sliding window size.", rich_help_panel=W)] = 336,
    stride: Annotated[int, typer.Option("--stride", help="Sliding window stride.", rich_help_panel=W)] = 112,
    logit_scale: Annotated[float, typer.Option("--logit-scale", help="Logit scale before the softmax.", rich_help_panel=W)] = 40.0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.", rich_help_panel=O)] = Path("fbseg-out"),
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write PHOTO.overlay.png with a legend.", rich_help_panel=O)] = False,
    opacity: Annotated[float, typer.Option("--opacity", min=0.0, max=1.0, help="Overlay opacity.", rich_help_panel=O)] = 0.5,
    save_probs: Annotated[bool, typer.Option("--save-probs", help="Also write per-class probabilities (float16 .npz).", rich_help_panel=O)] = False,
    masks: Annotated[str, typer.Option("--masks", help="indexed (one PNG, pixel = class) | per-class (also one binary PNG per class).", rich_help_panel=O)] = "indexed",
    compare: Annotated[bool, typer.Option("--compare", help="Also write the host-only mask and a diff image; the JSON gains the per-class change.", rich_help_panel=O)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rewrite existing outputs (default: skip).", rich_help_panel=O)] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.", rich_help_panel=O)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print each image's summary as one JSON line on stdout.", rich_help_panel=O)] = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_images: Annotated[Optional[int], typer.Option("--batch", min=1, help="Images whose windows share one model batch (default: 1 on CPU, 4 on GPU).", rich_help_panel=P)] = None,
    debug: DebugOpt = False,
) -> None:
    run_guarded(_run, dict(locals()))


def _run(*, paths, classes, classes_file, background, background_threshold, model, pretrained,
         checkpoint, host, proxy, proxy_checkpoint, feedback, lam, short_side, window, stride,
         logit_scale, output, overlay, opacity, save_probs, masks, compare, overwrite, recursive, as_json, quiet,
         device, precision, batch_images, debug) -> None:
    from fbseg.runs import batch, distributed
    from fbseg.errors import ConfigError, FbsegError

    cl = class_list(classes, classes_file, background, background_threshold)
    if compare and not feedback:
        raise ConfigError("--compare shows what FSA changes; it needs --feedback")
    if masks not in batch.MASK_MODES:
        raise ConfigError(f"unknown --masks {masks!r}; use {' or '.join(batch.MASK_MODES)}")
    scan = batch.collect_inputs(paths, recursive=recursive)
    batch.check_inputs(scan)
    if sum(i.path is None for i in scan.items) and sys.stdin.isatty():
        raise ConfigError("- reads an image from stdin, but stdin is a terminal")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} exists and is not a folder")

    dist = distributed.from_environment()
    show = not quiet and dist.is_main
    seg = load_segmenter(model=model, pretrained=pretrained, checkpoint=checkpoint, host=host,
                         proxy=proxy, proxy_checkpoint=proxy_checkpoint, feedback=feedback, lam=lam,
                         device=dist.device_for(device), precision=precision, show=show)
    settings = dict(short_side=short_side, window=window, stride=stride, logit_scale=logit_scale,
                    prob_threshold=background_threshold or 0.0, compare=compare)
    seg.encode_text(cl)  # validates settings-independent work once, before the loop
    opts = batch.OutputOptions(output, overlay, opacity, overwrite, save_probs, masks, cl.labels,
                               compare)
    group = batch_images or (4 if seg.device.type == "cuda" else 1)
    outcomes = [batch.ItemOutcome(batch.InputItem(Path(m), Path(m), m), "failed", f"{m}: no such file")
                for m in scan.missing] if dist.is_main else []
    items = dist.shard(scan.items)  # each rank its own disjoint share; alone: all of them
    progress = progress_bar(show and len(items) > 1)
    interrupted = False
    with progress:
        task = progress.add_task("segmenting", total=len(items))
        stream = batch.run_items(items, lambda images: seg.segment_batch(images, cl, **settings),
                                 opts, stdin_reader=sys.stdin.buffer.read,
                                 prepare=lambda rgb: seg.prepare(rgb, short_side), group_size=group)
        while True:
            try:
                outcome = next(stream)
            except StopIteration:
                break
            except KeyboardInterrupt:  # outputs are atomic: nothing partial is left behind
                interrupted = True
                break
            outcomes.append(outcome)
            progress.update(task, advance=1, description=outcome.item.display[-40:])
            if outcome.status == "failed":  # an error is reported even with -q
                progress.console.print(f"[red]failed:[/red] {outcome.reason}", soft_wrap=True)
            elif outcome.status == "skipped" and show:
                progress.console.print(f"skipped {outcome.item.display}: outputs exist (--overwrite to redo)")
            if as_json and outcome.result is not None:
                line = outcome.result.to_json()
                line["input"], line["outputs"] = outcome.item.display, outcome.outputs
                stdout_line(json.dumps(line))
    if interrupted:
        done = sum(o.status == "done" for o in outcomes)
        if len(scan.items) + len(scan.missing) > 1:
            _write_summary([batch.summary_entry(o) for o in outcomes], output)
        fail(f"interrupted: {done} of {len(items)} images done; rerun to resume", 130)
    order = {item.display: i for i, item in enumerate(scan.items)}
    entries = [e for part in dist.all_gather([batch.summary_entry(o) for o in outcomes]) for e in part]
    entries.sort(key=lambda e: order.get(e["input"], -1))  # input order, whatever the ranks
    if dist.is_main and len(scan.items) + len(scan.missing) > 1:
        entries += _write_summary(entries, output)
    # every rank exits with rank 0's verdict (only rank 0 knows whether summary.json was written)
    failed = any(e["status"] == "failed" for e in dist.all_gather(entries)[0])
    distributed.shutdown()
    if show:
        _report(outcomes, entries, scan.skipped_non_images)
    if failed:
        raise typer.Exit(4)


def _write_summary(entries: list[dict], output: Path) -> list[dict]:
    """Write summary.json; a failure to do so becomes one more failed entry (returned)."""
    from fbseg.runs import batch
    from fbseg.errors import FbsegError

    try:
        batch.write_run_summary(entries, output)
    except FbsegError as exc:
        return [{"input": batch.RUN_SUMMARY, "status": "failed", "reason": exc.one_line()}]
    return []


def _report(outcomes, entries: list[dict], skipped_non_images: int) -> None:
    """One image: its class table. Several: counts and every failure (all ranks' entries)."""
    from rich.table import Table

    done = [o for o in outcomes if o.status == "done"]
    if len(entries) == 1 and len(outcomes) == 1 and done:
        r = done[0].result
        t = Table(title=f"{done[0].item.display}  ({r.image_size[1]}×{r.image_size[0]}, "
                        f"{r.meta['timings']['total_s']:.2f} s)")
        for col in ("#", "class", "pixels %", "mean conf", "max conf"):
            t.add_column(col, justify="right" if col != "class" else "left")
        for s in r.summary():
            t.add_row(str(s.index), s.label, f"{100 * s.pixel_fraction:.1f}",
                      f"{s.mean_confidence:.3f}", f"{s.max_confidence:.3f}")
        err.print(t)
        err.print("wrote " + ", ".join(done[0].outputs.values()))
        return
    if len(entries) == 1:
        return  # its one line was printed as it happened
    counts = {s: sum(e["status"] == s for e in entries) for s in ("done", "skipped", "failed")}
    extra = f", {skipped_non_images} non-images ignored" if skipped_non_images else ""
    err.print(f"processed {counts['done']}, skipped {counts['skipped']}, failed {counts['failed']}{extra}")
    for e in entries:
        if e["status"] == "failed":
            err.print(f"  [red]✗[/red] {e['reason']}", soft_wrap=True)
