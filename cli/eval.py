"""`fbseg eval`: a benchmark's validation split with the paper's protocol; mIoU as mmseg."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from fbseg.eval.datasets import DATASETS

from ._console import err, fail, guarded, progress_bar, stdout_line
from ._options import (
    OUTPUT,
    BatchOpt,
    CheckpointOpt,
    CudaGraphsOpt,
    DebugOpt,
    DeviceOpt,
    EngineOpt,
    FeedbackOpt,
    HostOpt,
    LamOpt,
    LogitScaleOpt,
    ModelOpt,
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
    engine_of,
    load_engine,
    preset_and_config,
    say_names_to_encode,
)

HELP = f"""Evaluate on a benchmark ({", ".join(DATASETS.names())}) with the paper's protocol: its
class names, short side, window, stride and probability threshold (a protocol flag given
explicitly overrides the dataset's value). --root is the folder holding the dataset in mmseg's layout (see the
README). Per-image counts are cached in --work-dir, so an interrupted run resumes."""


def eval_command(
    dataset: Annotated[
        str, typer.Option("--dataset", help=" | ".join(DATASETS.names()) + ".", show_default=False)
    ],
    root: Annotated[
        Path,
        typer.Option(
            "--root", help="Folder holding the dataset (mmseg layout).", show_default=False
        ),
    ],
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
    limit: Annotated[
        Optional[int],
        typer.Option(
            "--limit", min=1, help="Only the first N images (a quick look).", rich_help_panel=OUTPUT
        ),
    ] = None,
    work_dir: Annotated[
        Path,
        typer.Option(
            "--work-dir", help="Where per-image counts and the report go.", rich_help_panel=OUTPUT
        ),
    ] = Path("fbseg-eval"),
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the report as JSON on stdout.", rich_help_panel=OUTPUT),
    ] = False,
    batch_images: BatchOpt = None,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    cuda_graphs: CudaGraphsOpt = None,
    debug: DebugOpt = False,
) -> None:
    flags = dict(locals())
    with guarded(debug):
        from fbseg.eval import evaluate
        from fbseg.eval.datasets import find_samples
        from fbseg.io import check_writable_folder
        from fbseg.runs import distributed

        spec = DATASETS.get(dataset)
        engine_name = engine_of(flags)
        samples = find_samples(spec, root)[:limit]
        # the dataset's protocol, then any protocol flag given explicitly
        _, config = preset_and_config(flags, spec.name)
        check_writable_folder(work_dir)  # counts and the report go there
        dist = distributed.from_environment()
        show = not quiet and dist.is_main
        seg = load_engine(engine_name, flags, config, show=show, device=dist.device_for(device))
        say_names_to_encode(seg, spec.classes(), show=show)
        mine = dist.shard(samples)
        progress = progress_bar(show)
        with progress:
            task = progress.add_task(f"{dataset}", total=len(mine))
            done = []

            def step(item):
                done.append(item)
                progress.update(task, advance=1, description=f"{dataset} {item.sample.id[-30:]}")

            try:
                report = evaluate.evaluate(
                    seg,
                    spec,
                    mine,
                    config=config,
                    work_dir=work_dir,
                    on_image=step,
                    images_per_call=batch_images,
                )
            except KeyboardInterrupt:  # every finished image's counts are already on disk
                fail(f"interrupted: {len(done)} of {len(mine)} images scored; rerun to resume", 130)
        report = evaluate.merge_ranks(report, dist, len(samples))
        distributed.shutdown()
        if not dist.is_main:
            return
        path = evaluate.write_report(report, work_dir)
        data = report.to_json()
        if as_json:
            stdout_line(json.dumps(data))
        if show:
            _table(data)
            err.print(f"report: {path}")


def _table(data: dict) -> None:
    from rich.table import Table

    t = Table(
        title=f"{data['dataset']} — {data['images']} images, {data.get('host', data.get('engine'))}"
        f"{' + FSA' if data.get('feedback') else ''}"
    )
    t.add_column("class")
    t.add_column("IoU %", justify="right")
    t.add_column("Acc %", justify="right")
    for row in data["per_class"]:
        t.add_row(
            row["class"][:40],
            "–" if row["IoU"] is None else f"{row['IoU']:.2f}",
            "–" if row["Acc"] is None else f"{row['Acc']:.2f}",
        )
    t.add_section()
    t.add_row(
        "mIoU",
        f"{data['mIoU']:.2f}" if data["mIoU"] is not None else "–",
        f"mAcc {data['mAcc']:.2f}" if data["mAcc"] is not None else "",
    )
    t.add_row("aAcc", f"{data['aAcc']:.2f}", "")
    err.print(t)
