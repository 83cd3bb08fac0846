"""The reader/model/writer stream: many images through one model, in order, with a bad
file reported and the run going on."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np

from fbseg.errors import InputError, OutputError
from fbseg.result import ResultDigest, SegmentationResult
from fbseg.runs.inputs import InputItem, read_input
from fbseg.runs.outputs import OutputOptions, output_paths, render_outputs, write_outputs
from fbseg.runs.worker_pool import WorkerDied, WorkerPool


class ItemStatus(str, Enum):
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class ItemOutcome:
    """What became of one input. ``result`` (the arrays) is set while the outcome is handed
    out and dropped by runs that keep outcomes (``without_result``); ``digest`` (size, class
    summary, meta) stays."""

    item: InputItem
    status: ItemStatus
    reason: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    result: SegmentationResult | None = None
    seconds: float = 0.0
    digest: ResultDigest | None = None

    def without_result(self) -> ItemOutcome:
        """This outcome without the image's arrays (a long run keeps only the digest)."""
        return replace(self, result=None)


@dataclass
class _Loaded:
    """An item after the reader thread: decoded and prepared, or already decided."""

    item: InputItem
    paths: dict[str, Path]
    rgb: np.ndarray | None = None
    payload: object = None
    outcome: ItemOutcome | None = None  # skipped / failed before the model
    result: SegmentationResult | None = None
    write: Future | None = None  # → (failure reason or None, seconds spent writing)


_END = object()


def _decode(
    item: InputItem, stdin_reader: Callable[[], bytes] | None, readers: Executor | None
) -> np.ndarray:
    """An item's pixels, (H, W, 3) uint8: decoded by a reader process where the run has them
    (stdin is read here, where it is open), else in this thread."""
    if readers is None or item.path is None:
        return read_input(item, stdin_reader)
    return readers.submit(read_input, item).result()


def _load(
    item: InputItem,
    opts: OutputOptions,
    prepare: Callable[[np.ndarray], object],
    stdin_reader: Callable[[], bytes] | None,
    readers: Executor | None = None,
) -> _Loaded:
    """One item decoded and prepared, or already decided (outputs exist, unreadable)."""
    paths = output_paths(item, opts)
    entry = _Loaded(item, paths)
    if not opts.overwrite and all(p.exists() for p in paths.values()):
        entry.outcome = ItemOutcome(
            item, ItemStatus.SKIPPED, "outputs exist", {k: str(p) for k, p in paths.items()}
        )
        return entry
    try:
        entry.rgb = _decode(item, stdin_reader, readers)
        entry.payload = prepare(entry.rgb)
    except InputError as exc:
        entry.outcome = ItemOutcome(item, ItemStatus.FAILED, exc.one_line())
    except WorkerDied as exc:  # that image fails; a new reader takes the next ones
        entry.outcome = ItemOutcome(item, ItemStatus.FAILED, f"{item.display}: not read: {exc}")
    except Exception as exc:  # never let one file stop the run
        entry.outcome = ItemOutcome(item, ItemStatus.FAILED, f"{item.display}: cannot read ({exc})")
    return entry


def _reader(
    items: Sequence[InputItem],
    load: Callable[[InputItem], _Loaded],
    decoders: ThreadPoolExecutor,
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    """Hand items to the decoder threads in order; their futures go, in order, into the
    bounded queue (so decoding runs ahead of the model on several threads)."""

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                out.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    for item in items:
        if stop.is_set() or not put(decoders.submit(load, item)):
            return
    put(_END)


def _write_files(
    item: InputItem,
    paths: dict[str, Path],
    rgb: np.ndarray | None,
    result: SegmentationResult,
    opts: OutputOptions,
) -> tuple[str | None, float]:
    """Render and write one image's files (in a writer thread or process): the one-line
    reason if that failed, and the seconds it took."""
    t0 = time.perf_counter()
    try:
        write_outputs(render_outputs(result, rgb, item, opts), paths, opts.overwrite)
    except OutputError as exc:
        return exc.one_line(), time.perf_counter() - t0
    return None, time.perf_counter() - t0


def _written(entry: _Loaded) -> ItemOutcome:
    """The outcome of an image whose write was submitted (waits for it)."""
    try:
        failure, seconds = entry.write.result()
    except WorkerDied as exc:  # that image fails; a new writer takes the next ones
        failure, seconds = f"{entry.item.display}: not written: {exc}", 0.0
    result = entry.result
    if failure is not None:
        return ItemOutcome(entry.item, ItemStatus.FAILED, failure)
    return ItemOutcome(
        entry.item,
        ItemStatus.DONE,
        "",
        {k: str(p) for k, p in entry.paths.items()},
        result,
        result.meta.get("timings", {}).get("total_s", 0.0) + seconds,
        result.digest(),
    )


def _writers(count: int, processes: bool) -> Executor:
    """``count`` writer threads, or worker processes (``WorkerPool``), which keep PNG
    encoding and file writing off the interpreter lock that the thread driving the model
    needs."""
    if processes:
        return WorkerPool(count, role="writer")
    return ThreadPoolExecutor(max_workers=count, thread_name_prefix="fbseg-write")


def _submit_write(writer: Executor, entry: _Loaded, opts: OutputOptions, processes: bool) -> None:
    """Hand one image's outputs to a writer. A process gets the image's pixels only when an
    output shows them, and the probabilities only for ``save_probs`` (formed here first if
    the engine left them on its device)."""
    rgb = entry.rgb
    if processes:
        if not (opts.overlay or opts.compare):
            rgb = None
        if opts.save_probs:
            entry.result.probs  # noqa: B018 (formed on this side, where the device is)
    entry.write = writer.submit(_write_files, entry.item, entry.paths, rgb, entry.result, opts)


def _segment_group(todo: list[_Loaded], segment_batch: Callable[[list], list]) -> list[tuple]:
    """(entry, result or failed outcome) for each entry. A group that fails for an image's
    sake (InputError: a window too large for the device) is retried image by image, so only
    that image fails."""
    if not todo:
        return []
    try:
        return list(zip(todo, segment_batch([e.payload for e in todo])))
    except InputError as exc:
        if len(todo) == 1:
            return [
                (
                    todo[0],
                    ItemOutcome(
                        todo[0].item, ItemStatus.FAILED, f"{todo[0].item.display}: {exc.one_line()}"
                    ),
                )
            ]
    return [pair for entry in todo for pair in _segment_group([entry], segment_batch)]


def stream_items(
    items: Sequence[InputItem],
    segment_batch: Callable[[list], list[SegmentationResult]],
    opts: OutputOptions,
    stdin_reader: Callable[[], bytes] | None = None,
    *,
    prepare: Callable[[np.ndarray], object] = lambda rgb: rgb,
    images_per_group: int = 1,
    prefetch: int = 4,
    io_threads: int = 1,
    writers: int | None = None,
    writer_processes: bool = False,
    reader_processes: bool = False,
) -> Iterator[ItemOutcome]:
    """Segment and write each item, in order; a bad item is reported and the run goes on.

    Three stages overlap: ``io_threads`` decoder threads read and ``prepare`` items ahead
    (in order; at least ``prefetch``, and the whole next group while the model runs one;
    ``reader_processes``: worker processes decode, and the threads only run ``prepare``),
    the caller's thread runs ``segment_batch`` on groups of ``images_per_group`` prepared
    images, and ``writers`` (default ``io_threads``) writer threads render and write outputs
    (``writer_processes``: worker processes instead). An item whose outputs all exist is
    skipped unless ``opts.overwrite``. On KeyboardInterrupt the writes already started are
    finished and reported, then KeyboardInterrupt is raised again.
    """
    ahead = max(1, prefetch, 2 * io_threads, images_per_group + io_threads)
    loaded: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    decoders = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="fbseg-read")
    readers = WorkerPool(io_threads, role="reader") if reader_processes else None

    def load(item: InputItem) -> _Loaded:
        return _load(item, opts, prepare, stdin_reader, readers)

    reader = threading.Thread(
        target=_reader, daemon=True, args=(items, load, decoders, loaded, stop)
    )
    writer = _writers(writers or io_threads, writer_processes)
    in_flight: list[_Loaded] = []

    def finished(entry: _Loaded) -> ItemOutcome:
        return entry.outcome if entry.write is None else _written(entry)

    reader.start()
    interrupted = False
    try:
        ended = False
        while not ended:
            group: list[_Loaded] = []
            while sum(e.outcome is None for e in group) < images_per_group:
                pending = loaded.get()
                if pending is _END:
                    ended = True
                    break
                group.append(pending.result())
            todo = [e for e in group if e.outcome is None]
            for entry, result in _segment_group(todo, segment_batch):
                entry.payload = None  # free the prepared tensor early
                if isinstance(result, ItemOutcome):
                    entry.outcome = result
                else:
                    entry.result = result
                    _submit_write(writer, entry, opts, writer_processes)
            while in_flight:  # the previous group's writes ran while the model worked
                yield finished(in_flight.pop(0))
            in_flight = group
        while in_flight:
            yield finished(in_flight.pop(0))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        decoders.shutdown(wait=False, cancel_futures=True)
        if readers is not None:
            readers.shutdown(wait=False, cancel_futures=True)
        writer.shutdown(wait=True)
    if interrupted:
        for entry in in_flight:
            if entry.write is not None:
                yield _written(entry)
        raise KeyboardInterrupt
