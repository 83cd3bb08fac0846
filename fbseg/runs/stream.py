"""The reader/model/writer stream: many images through one model, in order, with a bad
file reported and the run going on."""

from __future__ import annotations

import functools
import math
import queue
import threading
import time
from collections import deque
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


def _read_failure(item: InputItem, exc: BaseException) -> str:
    """The one-line reason an image could not be read, wherever it was decoded."""
    if isinstance(exc, InputError):
        return exc.one_line()
    if isinstance(exc, WorkerDied):
        return f"{item.display}: not read: {exc}"
    return f"{item.display}: cannot read ({exc})"


def read_inputs(
    items: Sequence[InputItem], stdin_reader: Callable[[], bytes] | None = None
) -> list[np.ndarray | str]:
    """Each item's pixels, (H, W, 3) uint8, or the one-line reason it could not be read:
    one call decodes several images (a reader process gets them in one message)."""
    decoded: list[np.ndarray | str] = []
    for item in items:
        try:
            decoded.append(read_input(item, stdin_reader))
        except Exception as exc:  # never let one file stop the others
            decoded.append(_read_failure(item, exc))
    return decoded


def _decode(
    items: Sequence[InputItem],
    stdin_reader: Callable[[], bytes] | None,
    readers: Executor | None,
) -> list[np.ndarray | str]:
    """``read_inputs`` for items in order: in a reader process where the run has them
    (stdin is read here, where it is open), else in this thread."""
    if readers is None:
        return read_inputs(items, stdin_reader)
    decoded: list[np.ndarray | str | None] = [None] * len(items)
    away = []
    for i, item in enumerate(items):
        if item.path is None:
            decoded[i] = read_inputs([item], stdin_reader)[0]
        else:
            away.append(i)
    for i, pixels in zip(away, _read_away([items[i] for i in away], readers)):
        decoded[i] = pixels
    return decoded


def _read_away(items: Sequence[InputItem], readers: Executor) -> list[np.ndarray | str]:
    """``read_inputs`` in a reader process, one message for all ``items``. A process that
    dies with several images is asked again for each alone, so only the image that ended
    it fails (a new reader takes the next ones)."""
    if not items:
        return []
    try:
        return readers.submit(read_inputs, items).result()
    except WorkerDied as exc:
        if len(items) == 1:
            return [_read_failure(items[0], exc)]
    return [pixels for item in items for pixels in _read_away([item], readers)]


def _load(
    items: Sequence[InputItem],
    opts: OutputOptions,
    prepare: Callable[[np.ndarray], object],
    stdin_reader: Callable[[], bytes] | None,
    readers: Executor | None = None,
) -> list[_Loaded]:
    """Consecutive items decoded and prepared, or already decided (outputs exist,
    unreadable)."""
    entries = [_Loaded(item, output_paths(item, opts)) for item in items]
    todo = []
    for entry in entries:
        if not opts.overwrite and all(p.exists() for p in entry.paths.values()):
            entry.outcome = ItemOutcome(
                entry.item,
                ItemStatus.SKIPPED,
                "outputs exist",
                {k: str(p) for k, p in entry.paths.items()},
            )
        else:
            todo.append(entry)
    for entry, pixels in zip(todo, _decode([e.item for e in todo], stdin_reader, readers)):
        if isinstance(pixels, str):
            entry.outcome = ItemOutcome(entry.item, ItemStatus.FAILED, pixels)
            continue
        entry.rgb = pixels
        try:
            entry.payload = prepare(pixels)
        except Exception as exc:  # never let one file stop the run
            entry.outcome = ItemOutcome(
                entry.item, ItemStatus.FAILED, _read_failure(entry.item, exc)
            )
    return entries


def _reader(
    chunks: Sequence[Sequence[InputItem]],
    load: Callable[[Sequence[InputItem]], list[_Loaded]],
    decoders: ThreadPoolExecutor,
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    """Hand chunks of consecutive items to the decoder threads in order; their futures go,
    in order, into the bounded queue (so decoding runs ahead of the model on several
    threads)."""

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                out.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    for chunk in chunks:
        if stop.is_set() or not put(decoders.submit(load, chunk)):
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


WriteJob = tuple[InputItem, dict[str, Path], "np.ndarray | None", SegmentationResult]


def write_images(jobs: Sequence[WriteJob], opts: OutputOptions) -> list[tuple[str | None, float]]:
    """``_write_files`` for several images: one call to a writer (one message to a writer
    process) writes them all, each with its own failure reason and seconds."""
    return [_write_files(*job, opts) for job in jobs]


@dataclass
class _PendingWrite:
    """One image's place in a writer call that may hold several images."""

    call: Future  # → (failure reason or None, seconds) for each image of the call
    index: int
    alone: Callable[[], Future] | None  # this image's write by itself; None: it was alone
    retried: Future | None = None

    def result(self) -> tuple[str | None, float]:
        """Wait for this image's write. When a writer process died with several images,
        this one is written again alone (once; finished files count as written), so only
        the image that ended the process fails; after Ctrl-C the writers are closed, and
        the death is this image's too."""
        try:
            return self.call.result()[self.index]
        except WorkerDied as died:
            if self.alone is None:
                raise
            if self.retried is None:
                try:
                    self.retried = self.alone()
                except RuntimeError:  # the writers were shut down
                    raise died from None
        return self.retried.result()[0]


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


def _submit_writes(
    writer: Executor, entries: list[_Loaded], opts: OutputOptions, processes: int | None
) -> None:
    """Hand the images' outputs to the writers: to ``processes`` writer processes in one call
    each, of consecutive images as even as they divide (with 11 writers a group of 16 goes as
    5 calls of 2 and 6 of 1, so every writer gets a share, not 8 of them 2 each); to writer
    threads (None) one image per call. A process gets an image's pixels only when an output
    shows them, and the probabilities only for ``save_probs``, as float16 (formed here first
    if the engine left them on its device: rounded there, half the bytes cross)."""
    shows_pixels = not processes or opts.overlay or opts.compare
    for share in even_shares(entries, processes or len(entries)):
        jobs = []
        for entry in share:
            if processes and opts.save_probs:
                entry.result.probs_float16  # noqa: B018 (formed on this side, by the device)
            jobs.append(
                (entry.item, entry.paths, entry.rgb if shows_pixels else None, entry.result)
            )
        call = writer.submit(write_images, jobs, opts)
        for k, (entry, job) in enumerate(zip(share, jobs)):
            alone = None
            if len(jobs) > 1:
                alone = functools.partial(writer.submit, write_images, [job], opts)
            entry.write = _PendingWrite(call, k, alone)


def _chunked(items: Sequence, size: int) -> list[Sequence]:
    """``items`` in consecutive slices of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def even_shares(items: Sequence, parts: int) -> list[Sequence]:
    """``items`` in ``min(parts, len(items))`` consecutive slices whose lengths differ by at
    most one, the longer first."""
    parts = min(parts, len(items))
    if parts < 1:
        return []
    size, longer = divmod(len(items), parts)
    bounds = [0]
    for k in range(parts):
        bounds.append(bounds[-1] + size + (k < longer))
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


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
    (``writer_processes``: worker processes instead). Worker processes get their images in
    shares of a group, one message each way per share, so few hand-offs compete with the
    thread that drives the model for the interpreter lock. An item whose outputs all exist
    is skipped unless ``opts.overwrite``. On KeyboardInterrupt the writes already started
    are finished and reported, then KeyboardInterrupt is raised again.
    """
    # images per reader call: a group's share of each process; a thread takes one at a time
    # (its hand-offs are cheap, and one image spreads the work best); writers likewise
    # (``_submit_writes``)
    per_read = math.ceil(images_per_group / io_threads) if reader_processes else 1
    writers = writers or io_threads
    ahead = max(1, prefetch, 2 * io_threads, images_per_group + io_threads)
    loaded: queue.Queue = queue.Queue(maxsize=math.ceil(ahead / per_read))
    stop = threading.Event()
    decoders = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="fbseg-read")
    readers = WorkerPool(io_threads, role="reader") if reader_processes else None

    def load(chunk: Sequence[InputItem]) -> list[_Loaded]:
        return _load(chunk, opts, prepare, stdin_reader, readers)

    reader = threading.Thread(
        target=_reader,
        daemon=True,
        args=(_chunked(items, per_read), load, decoders, loaded, stop),
    )
    writer = _writers(writers, writer_processes)
    ready: deque[_Loaded] = deque()
    in_flight: list[_Loaded] = []

    def next_loaded() -> _Loaded | None:
        """The next item from the readers, in order; None after the last."""
        while not ready:
            pending = loaded.get()
            if pending is _END:
                return None
            ready.extend(pending.result())
        return ready.popleft()

    def finished(entry: _Loaded) -> ItemOutcome:
        return entry.outcome if entry.write is None else _written(entry)

    reader.start()
    interrupted = False
    try:
        ended = False
        while not ended:
            group: list[_Loaded] = []
            while sum(e.outcome is None for e in group) < images_per_group:
                entry = next_loaded()
                if entry is None:
                    ended = True
                    break
                group.append(entry)
            segmented = []
            for entry, result in _segment_group(
                [e for e in group if e.outcome is None], segment_batch
            ):
                entry.payload = None  # free the prepared tensor early
                if isinstance(result, ItemOutcome):
                    entry.outcome = result
                else:
                    entry.result = result
                    segmented.append(entry)
            _submit_writes(writer, segmented, opts, writers if writer_processes else None)
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
