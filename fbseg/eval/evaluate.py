"""`fbseg eval`: a benchmark's validation split through a Segmenter, scored like mmseg.

Per-image area counts are cached on disk (atomically) under a key of everything that
decides them, so an interrupted evaluation resumes where it stopped and a finished one
re-scores instantly.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fbseg.errors import InputError
from fbseg.eval.datasets import DatasetSpec, Sample, load_label
from fbseg.eval.metrics import Scores, area_counts, scores_from_counts
from fbseg.io import atomic_write_bytes, check_writable_folder, read_image
from fbseg.pipeline.config import SegmentConfig
from fbseg.pipeline.device import (
    default_images_per_call,
    default_io_threads,
    default_reader_processes,
)
from fbseg.runs.worker_pool import WorkerDied, WorkerPool


def run_key(identity: dict, spec: DatasetSpec, config: SegmentConfig) -> str:
    """A key of everything that decides the counts: the model's identity, the dataset and the
    protocol it is run with."""
    blob = json.dumps(
        {
            "identity": identity,
            "dataset": spec.name,
            "protocol": config.protocol(),
            "reduce_zero_label": spec.reduce_zero_label,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ImageCounts:
    sample: Sample
    counts: np.ndarray  # (4, K) int64
    cached: bool
    seconds: float


class CountsCache:
    """``folder/<sample id>.npy``: one image's (4, K) counts; None disables caching."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _path(self, sample: Sample) -> Path:
        assert self.folder is not None
        return self.folder / (sample.id.replace("/", "__") + ".npy")

    def get(self, sample: Sample, num_classes: int) -> np.ndarray | None:
        if self.folder is None or not self._path(sample).is_file():
            return None
        try:
            counts = np.load(self._path(sample))
        except (OSError, ValueError):
            return None  # damaged: recompute
        return counts if counts.shape == (4, num_classes) else None

    def put(self, sample: Sample, counts: np.ndarray) -> None:
        if self.folder is None:
            return
        buf = io.BytesIO()
        np.save(buf, counts)
        atomic_write_bytes(self._path(sample), buf.getvalue(), overwrite=True)


def read_sample(image: Path, label: Path, reduce_zero_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """A sample's pixels (H, W, 3) uint8 and its label map (H, W) uint8, decoded (in a reader
    process beside a GPU)."""
    return read_image(image), load_label(label, reduce_zero_label)


def iter_counts(
    segmenter,
    spec: DatasetSpec,
    samples: Sequence[Sample],
    cache: CountsCache,
    config: SegmentConfig,
    images_per_call: int = 1,
    io_threads: int = 1,
    reader_processes: bool = False,
) -> Iterator[ImageCounts]:
    """Counts of every sample, in order: the cached ones first, then the rest segmented
    ``images_per_call`` at a time (their windows share model batches). Background threads
    decode the next images (``reader_processes``: each through a worker process, as a folder
    run does beside a GPU), and count each group's pixels against its labels, while the
    model runs the next group."""
    classes = spec.classes()
    todo = []
    for sample in samples:
        counts = cache.get(sample, spec.num_classes)
        if counts is None:
            todo.append(sample)
        else:
            yield ImageCounts(sample, counts, True, 0.0)
    if not todo:
        return
    readers = WorkerPool(io_threads, role="reader") if reader_processes else None

    def load(sample: Sample):
        args = (sample.image, sample.label, spec.reduce_zero_label)
        if readers is None:
            rgb, label = read_sample(*args)
        else:
            try:
                rgb, label = readers.submit(read_sample, *args).result()
            except WorkerDied as exc:
                raise InputError(f"{sample.image}: not read: {exc}") from None
        return segmenter.prepare(rgb, config), label

    def count(sample: Sample, labels: np.ndarray, label: np.ndarray) -> np.ndarray:
        if labels.shape != label.shape:
            raise InputError(
                f"{sample.label}: label map {label.shape[::-1]} does not match "
                f"image {labels.shape[::-1]}"
            )
        counts = area_counts(labels, label, spec.num_classes)
        cache.put(sample, counts)
        return counts

    ahead = 2 * images_per_call
    with ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="fbseg-eval-read") as pool:
        queued: deque = deque()
        rest = iter(todo)
        counting: deque[tuple[Sample, Future, float]] = deque()  # counts not yet handed out

        def fill() -> None:
            while len(queued) < ahead and (sample := next(rest, None)) is not None:
                queued.append((sample, pool.submit(load, sample)))

        def counted(sample: Sample, counts: Future, seconds: float) -> ImageCounts:
            return ImageCounts(sample, counts.result(), False, seconds)

        fill()
        try:
            while queued:
                group = [queued.popleft() for _ in range(min(images_per_call, len(queued)))]
                fill()
                t0 = time.perf_counter()
                loaded = [(sample, *future.result()) for sample, future in group]
                results = segmenter.segment_batch([p for _, p, _ in loaded], classes, config)
                seconds = (time.perf_counter() - t0) / len(loaded)
                # counted in the pool's threads while the model runs the next group
                for (sample, _, label), result in zip(loaded, results):
                    labels = result.compact_labels
                    counting.append((sample, pool.submit(count, sample, labels, label), seconds))
                while len(counting) > len(loaded):  # the previous group's
                    yield counted(*counting.popleft())
        except KeyboardInterrupt:  # what was segmented is counted and reported, then stop
            while counting:
                yield counted(*counting.popleft())
            raise
        finally:
            if readers is not None:
                readers.shutdown(wait=False, cancel_futures=True)
        while counting:
            yield counted(*counting.popleft())


@dataclass
class EvalReport:
    dataset: str
    key: str  # run_key of identity and protocol: names the counts folder and the report
    identity: dict
    settings: dict
    class_labels: tuple[str, ...]
    num_images: int
    totals: np.ndarray
    seconds: float

    @property
    def scores(self) -> Scores:
        return scores_from_counts(self.totals)

    def to_json(self) -> dict:
        return {
            "schema_version": 1,
            "dataset": self.dataset,
            "images": self.num_images,
            **self.scores.to_dict(self.class_labels),
            **self.identity,
            "settings": self.settings,
            "seconds": round(self.seconds, 2),
        }


def evaluate(
    segmenter,
    spec: DatasetSpec,
    samples: Sequence[Sample],
    *,
    config: SegmentConfig | None = None,
    work_dir: Path | None = None,
    on_image: Callable[[ImageCounts], None] | None = None,
    images_per_call: int | None = None,
    reader_processes: bool | None = None,
) -> EvalReport:
    """Score ``samples`` with ``config`` (default: the segmenter's FSA settings with the
    dataset's protocol); counts are cached under ``work_dir/counts/<run key>/``.
    ``images_per_call`` images share one model batch (default: ``images_per_call`` of the
    device: 1 on a CPU, 16 on a GPU); ``reader_processes``: decode in worker processes
    (default: as a folder run does beside this device). The counts depend on neither."""
    config = config or spec.config(segmenter.config)
    identity = segmenter.identity(config)
    key = run_key(identity, spec, config)
    if work_dir is not None:
        check_writable_folder(work_dir)  # before any image, not at the first count
    folder = work_dir / "counts" / key if work_dir is not None else None
    cache = CountsCache(folder)
    totals = np.zeros((4, spec.num_classes), np.int64)
    t0 = time.perf_counter()
    group = images_per_call or default_images_per_call(segmenter.device)
    threads = default_io_threads(segmenter.device)
    if reader_processes is None:
        reader_processes = default_reader_processes(segmenter.device)
    for item in iter_counts(
        segmenter, spec, samples, cache, config, group, threads, reader_processes
    ):
        totals += item.counts
        if on_image is not None:
            on_image(item)
    return EvalReport(
        spec.name,
        key,
        identity,
        config.protocol(),
        spec.classes().labels,
        len(samples),
        totals,
        time.perf_counter() - t0,
    )


def merge_ranks(report: EvalReport, dist, total_images: int) -> EvalReport:
    """The report of the whole run under torchrun: counts summed over ranks (so the mIoU
    equals one process's), the slowest rank's time, every image counted."""
    if not dist.active:
        return report
    report.totals = dist.all_reduce_sum(report.totals)
    report.seconds = max(dist.all_gather(report.seconds))
    report.num_images = total_images
    return report


def write_report(report: EvalReport, work_dir: Path) -> Path:
    """``work_dir/<dataset>-<run key>.json`` (rewritten: it is derived from the cache)."""
    path = Path(work_dir) / f"{report.dataset}-{report.key}.json"
    atomic_write_bytes(
        path, (json.dumps(report.to_json(), indent=2) + "\n").encode(), overwrite=True
    )
    return path
