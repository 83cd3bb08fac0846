"""A whole run as one library call: inputs found, shards taken per rank, images streamed
through an engine, outputs written atomically with resume, ``summary.json``, an exit status."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fbseg.classes import ClassList
from fbseg.errors import ConfigError, FbsegError
from fbseg.io import check_writable_folder
from fbseg.pipeline.config import SegmentConfig
from fbseg.pipeline.device import (
    default_images_per_call,
    default_io_threads,
    default_reader_processes,
    default_writer_process_count,
    default_writer_processes,
)
from fbseg.pipeline.engine import Engine
from fbseg.runs import distributed
from fbseg.runs.inputs import RUN_SUMMARY, InputItem, InputScan, check_inputs, collect_inputs
from fbseg.runs.outputs import OutputOptions, remove_stale_outputs
from fbseg.runs.stream import ItemOutcome, ItemStatus, stream_items
from fbseg.runs.summary import summary_entry, write_run_summary

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 4, 130


@dataclass
class FolderRun:
    """What ``segment_folder`` did.

    outcomes: this process's images, in input order, each with its digest (class summary,
              size, meta); the arrays went to ``on_outcome`` and were not kept;
    entries:  every rank's ``summary.json`` entries in input order (a failure to write the
              summary itself is one more failed entry);
    """

    outcomes: list[ItemOutcome] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)
    planned: int = 0  # images this process was given
    skipped_non_images: int = 0
    interrupted: bool = False

    def count(self, status: ItemStatus) -> int:
        return sum(e["status"] == status.value for e in self.entries)

    @property
    def done_here(self) -> int:
        return sum(o.status is ItemStatus.DONE for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """130 interrupted, 4 when any image (or the summary) failed, else 0."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.count(ItemStatus.FAILED) else EXIT_OK


def check_run(options: OutputOptions, config: SegmentConfig) -> None:
    """Settings a run cannot start with, and an output folder it could not write into
    (checked before any model is loaded)."""
    config.check()
    if options.compare and not config.feedback:
        raise ConfigError("--compare shows what FSA changes; it needs --feedback")
    check_writable_folder(options.out_dir)


def scan_inputs(paths: Sequence[str], recursive: bool = False) -> InputScan:
    """The images under ``paths``; none at all is a ``NoInputError`` (exit 5)."""
    scan = collect_inputs(paths, recursive=recursive)
    check_inputs(scan)
    return scan


def segment_folder(
    engine: Engine,
    paths: Sequence[str] | InputScan,
    classes: ClassList,
    options: OutputOptions,
    *,
    config: SegmentConfig | None = None,
    recursive: bool = False,
    images_per_group: int | None = None,
    io_threads: int | None = None,
    writers: int | None = None,
    writer_processes: bool | None = None,
    reader_processes: bool | None = None,
    stdin_reader: Callable[[], bytes] | None = None,
    dist: distributed.Dist | None = None,
    on_start: Callable[[int], None] | None = None,
    on_outcome: Callable[[ItemOutcome], None] | None = None,
) -> FolderRun:
    """Segment every image under ``paths`` (files, folders, globs, "-" for ``stdin_reader``;
    or an ``InputScan`` already made by ``scan_inputs``) and write its outputs into
    ``options.out_dir``.

    A bad image is reported in its outcome and the run goes on; outputs that all exist are
    skipped unless ``options.overwrite`` (so a rerun resumes); several inputs also write
    ``summary.json``. Under torchrun each rank takes its own share and rank 0 merges the
    summary. Ctrl-C finishes the writes in flight and returns with ``interrupted`` set.
    ``images_per_group`` images share one model batch, beside ``io_threads`` reader threads
    and ``writers`` writers: threads, or worker processes with ``writer_processes``; with
    ``reader_processes`` the images are decoded in one worker process per reader thread
    (beside a GPU the thread that drives the model then barely shares the interpreter lock).
    Defaults by device: ``IMAGES_PER_CALL``, ``IO_THREADS``, ``WRITER_PROCESSES``,
    ``READER_PROCESSES``, and as writers ``io_threads`` threads or
    ``default_writer_process_count`` processes. A single image starts no process.
    """
    cfg = config or engine.config
    check_run(options, cfg)
    scan = paths if isinstance(paths, InputScan) else scan_inputs(paths, recursive)
    if any(i.path is None for i in scan.items) and stdin_reader is None:
        raise ConfigError("- reads an image from stdin, but no stdin was given")
    dist = dist or distributed.from_environment()
    engine.encode_text(classes)  # a bad class list fails once, before the loop
    group = images_per_group or default_images_per_call(engine.device)
    run = FolderRun(skipped_non_images=scan.skipped_non_images)
    if dist.is_main:
        run.outcomes = [
            ItemOutcome(InputItem(Path(m), Path(m), m), ItemStatus.FAILED, f"{m}: no such file")
            for m in scan.missing
        ]
    items = dist.shard(scan.items)  # each rank its own disjoint share; alone: all of them
    run.planned = len(items)
    remove_stale_outputs(items, options)
    several = len(scan.items) + len(scan.missing) > 1
    if on_start is not None:
        on_start(len(items))

    def in_processes(asked: bool | None, by_device: Callable[..., bool]) -> bool:
        """The caller's choice, else the device's; no process to start for one image."""
        return (by_device(engine.device) if asked is None else asked) and len(items) > 1

    processes = in_processes(writer_processes, default_writer_processes)
    decode_in_processes = in_processes(reader_processes, default_reader_processes)
    readers = io_threads or default_io_threads(engine.device)
    if not writers:
        writers = default_writer_process_count(engine.device) if processes else readers
    stream = stream_items(
        items,
        lambda images: engine.segment_batch(images, classes, cfg, compare=options.compare),
        options,
        stdin_reader=stdin_reader,
        prepare=lambda rgb: engine.prepare(rgb, cfg),
        images_per_group=group,
        io_threads=readers,
        writers=max(1, min(writers, len(items))),  # no idle writer process for a short run
        writer_processes=processes,
        reader_processes=decode_in_processes,
    )
    while True:
        try:
            outcome = next(stream)
        except StopIteration:
            break
        except KeyboardInterrupt:  # outputs are atomic: nothing partial is left behind
            run.interrupted = True
            break
        if on_outcome is not None:
            on_outcome(outcome)
        run.outcomes.append(outcome.without_result())  # a long run must not keep every array
    if run.interrupted:
        run.entries = [summary_entry(o) for o in run.outcomes]
        if several:
            run.entries += _write_summary(run.entries, options.out_dir)
        return run
    order = {item.display: i for i, item in enumerate(scan.items)}
    mine = [summary_entry(o) for o in run.outcomes]
    entries = [e for part in dist.all_gather(mine) for e in part]
    entries.sort(key=lambda e: order.get(e["input"], -1))  # input order, whatever the ranks
    if dist.is_main and several:
        entries += _write_summary(entries, options.out_dir)
    # every rank reports rank 0's entries (only rank 0 knows whether summary.json was written)
    run.entries = dist.all_gather(entries)[0]
    return run


def _write_summary(entries: list[dict], out_dir: Path) -> list[dict]:
    """Write summary.json; a failure to do so becomes one more failed entry (returned)."""
    try:
        write_run_summary(entries, out_dir)
    except FbsegError as exc:
        return [{"input": RUN_SUMMARY, "status": ItemStatus.FAILED.value, "reason": exc.one_line()}]
    return []
