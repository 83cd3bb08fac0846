"""The folder pipeline's own cost: `segment_folder` with an engine that answers at once, so
what is left is the run itself — reading, handing images to the model's thread, handing
results to the writers, writing — and what it costs the process that drives the model.

Beside a GPU that process's thread launches the model's kernels and needs the interpreter
lock for it; every thread of the same process that wakes up takes that lock from it. So the
table shows, per image, the CPU time of all the calling process's threads (worker processes
not included) and how often its threads were switched out (voluntary: waiting for a lock, a
pipe or a queue; involuntary: preempted), with the rate. ``--busy-ops N`` makes the engine
hold the lock for N small torch operations per image (as kernel launches do; the same work
whatever the checkout) and adds how long those calls took inside the run, beside the time
they take alone.

    python benchmarks/bench_stream.py [--images 300] [--repeats 3] [--json out.json]
    python benchmarks/bench_stream.py --busy-ops 300 --tree DIR   # another checkout

Rates on a machine with few cores are bound by the worker processes; compare the CPU and
switch columns of rows of one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if "--tree" in sys.argv:  # before fbseg is imported anywhere
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_pipeline import make_folder  # noqa: E402

CLASSES = 21


class ImmediateEngine:
    """An engine whose results are ready at once: (H, W) uint8 labels (a band of class 1
    on class 0) and their class statistics; ``busy_ops`` small torch operations per image
    first, holding the interpreter lock as kernel launches do."""

    def __init__(self, busy_ops: int = 0) -> None:
        from fbseg.pipeline.config import SegmentConfig

        self.device = torch.device("cpu")
        self.config = SegmentConfig()
        self.calls: list[tuple[int, float]] = []  # (images, seconds) per segment_batch
        self._ops_per_image = busy_ops

    def prepare(self, image, config=None):
        return image

    def encode_text(self, classes):
        return None

    def identity(self, config=None):
        return {}

    def segment_batch(self, images, classes, config=None, *, compare=False):
        from fbseg.result import SegmentationResult

        t0 = time.perf_counter()
        x = torch.zeros(4)
        for _ in range(self._ops_per_image * len(images)):
            x = x + 1.0
        self.calls.append((len(images), time.perf_counter() - t0))
        results = []
        for rgb in images:
            h, w = rgb.shape[:2]
            labels = np.zeros((h, w), np.uint8)
            labels[h // 3 : 2 * h // 3] = 1
            stats = np.zeros((3, len(classes)))
            ones = int(labels.sum())  # the band's pixels
            stats[0, :2] = [labels.size - ones, ones]
            stats[1:, :2] = 0.5
            meta = {"timings": {"total_s": 0.0}}
            results.append(
                SegmentationResult(
                    labels, _no_probs, classes.labels, classes.names, meta, class_stats=stats
                )
            )
        return results


def _no_probs():
    raise ValueError("this engine makes no probabilities")


def one_run(engine, folder: Path, out: Path, classes, outputs: dict, processes: bool, args):
    """One ``segment_folder`` run: rate, this process's CPU and switches per image."""
    from fbseg.runs.folder import segment_folder
    from fbseg.runs.outputs import OutputOptions

    opts = OutputOptions(out_dir=out, overwrite=True, class_labels=classes.labels, **outputs)
    engine.calls.clear()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run = segment_folder(
        engine,
        [str(folder)],
        classes,
        opts,
        images_per_group=args.group,
        io_threads=args.io_threads,
        writers=args.writers,
        writer_processes=processes,
        reader_processes=processes,
    )
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    n = run.done_here
    assert n == args.images, f"{n} of {args.images} images done"
    row = {
        "images_per_s": n / wall,
        "cpu_ms": 1000 * (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / n,
        "switches": (r1.ru_nvcsw - r0.ru_nvcsw) / n,
        "preempted": (r1.ru_nivcsw - r0.ru_nivcsw) / n,
    }
    if args.busy_ops:
        row["call_ms"] = 1000 * sum(s for _, s in engine.calls) / sum(k for k, _ in engine.calls)
    return row


def calls_alone(engine, classes, group: int, repeats: int = 15) -> float:
    """ms per image of the engine's busy work in ``segment_batch`` calls of ``group`` images
    outside any run (median): the same measure as a run's ``call_ms``."""
    image = np.zeros((8, 8, 3), np.uint8)
    engine.calls.clear()
    for _ in range(repeats):
        engine.segment_batch([image] * group, classes)
    alone = statistics.median(seconds / images for images, seconds in engine.calls)
    engine.calls.clear()
    return 1000 * alone


def gpu_run_workers(readers: int | None, writers: int | None) -> tuple[int, int]:
    """The reader threads and writer processes a folder run beside a GPU takes on this
    machine, where not given (4 and 4 for a checkout without those defaults)."""
    try:
        from fbseg.pipeline.device import default_io_threads, default_writer_process_count
    except ImportError:
        return readers or 4, writers or 4
    gpu = torch.device("cuda")
    return readers or default_io_threads(gpu), writers or default_writer_process_count(gpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3, help="runs per row; the median is shown")
    ap.add_argument("--group", type=int, default=16, help="images per model call")
    ap.add_argument("--io-threads", type=int, help="default: a GPU run's on this machine")
    ap.add_argument("--writers", type=int, help="default: a GPU run's on this machine")
    ap.add_argument("--busy-ops", type=int, default=0, help="torch operations per image")
    ap.add_argument("--no-threads", action="store_true", help="worker processes only")
    ap.add_argument("--tree", help="import fbseg from this checkout")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.io_threads, args.writers = gpu_run_workers(args.io_threads, args.writers)

    import fbseg
    from fbseg import parse_classes
    from fbseg.runs.outputs import MaskMode

    classes = parse_classes(",".join(f"c{i}" for i in range(CLASSES)))
    engine = ImmediateEngine(args.busy_ops)
    cases = {
        "masks + JSON": {},
        "--overlay": {"overlay": True},
        "--masks per-class": {"masks": MaskMode.PER_CLASS},
    }
    modes = [True] if args.no_threads else [True, False]
    print(
        f"fbseg from {Path(fbseg.__file__).parent.parent}; {args.images} images of 300-600 px, "
        f"{args.group} per call, {args.io_threads} readers, {args.writers} writers, "
        f"{CLASSES} classes; median of {args.repeats} runs"
    )
    report: dict = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "rows": []}
    if args.busy_ops:
        report["call_ms_alone"] = calls_alone(engine, classes, args.group)
        print(f"engine calls alone: {report['call_ms_alone']:.2f} ms per image")
    header = "| workers | outputs | images/s | CPU ms/image | switches/image | preempted/image |"
    if args.busy_ops:
        header += " call ms/image |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        make_folder(folder, args.images)
        for processes in modes:
            for name, outputs in cases.items():
                out = Path(tmp) / "out"
                one_run(engine, folder, out, classes, outputs, processes, args)  # warm-up
                runs = [
                    one_run(engine, folder, out, classes, outputs, processes, args)
                    for _ in range(args.repeats)
                ]
                row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                row |= {"workers": "processes" if processes else "threads", "outputs": name}
                report["rows"].append(row)
                line = (
                    f"| {row['workers']} | {name} | {row['images_per_s']:.1f} | "
                    f"{row['cpu_ms']:.2f} | {row['switches']:.1f} | {row['preempted']:.1f} |"
                )
                if args.busy_ops:
                    line += f" {row['call_ms']:.2f} |"
                print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
