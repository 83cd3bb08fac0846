"""Throughput on the device at hand (GPU or CPU): model-only images/s at several images per
call, the reference form, `segment_folder` end to end (plain, --overlay, --masks per-class,
--save-probs), `fbseg eval` on a VOC-layout copy of the images (random labels), peak
memory, achieved TFLOP/s from a FLOP count, the operations one call makes (each a kernel
launch beside a GPU), and the top kernels of a profile. One process, one device: compare
rows of one run only.

Without --checkpoint/--proxy-checkpoint, random ViT-B-16 (QuickGELU, as ViT-B-16/openai) and
DINO ViT-B/8 weights are written to a temporary folder: timings are real, masks meaningless.

    python benchmarks/bench_throughput.py [--device cuda] [--images 64] [--batches 1 4 16]
        [--hosts proxyclip naclip] [--json out.json]
    python benchmarks/bench_throughput.py --device cpu --images 4 --batches 1 2 --hosts naclip

``--tree DIR`` imports fbseg from another checkout (``git worktree add DIR COMMIT``) and,
with ``--model-only``, measures only what every version has (``Segmenter.from_pretrained``,
``prepare``, ``segment_batch``): run it beside a plain run on the same card for a ratio.
``--groups 1 16`` and ``--io-threads 8`` also run ``segment DIR`` at other settings than the
device's defaults, ``--writers 6 8`` with that many writer processes (fewer leave more cores
to the thread that drives the model), and ``--worker-nice 10`` with its reader and writer
processes at that niceness; ``--windows 8 32`` measures the largest images-per-call
setting at other window batch sizes (and ``segment DIR`` at the fastest of them, if faster
than the default), and ``--post-pass-mb 0 1024`` at other post-processing
pass sizes (0: image by image), each counting that call's operations too. On CUDA each
model-only row counts the host's waits for the device in one call (``torch.cuda.set_sync_debug_mode``), and the
forwards are also measured replayed as CUDA graphs (``Segmenter(cuda_graphs=True)``;
``--no-graphs`` leaves them out): how many were
recorded, how their labels and class statistics compare with the forwards run kernel by
kernel, model-only rows (with ``--windows``, at those window batches too) and the default
``segment DIR`` run at the window batch of the fastest of those rows.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if "--tree" in sys.argv:  # before fbseg is imported anywhere
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

from bench_pipeline import make_folder, random_weights  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _segmenter(args, host: str, reference: bool = False):
    from fbseg import Segmenter

    if reference:
        import reference_form

        reference_form.install()
    seg = Segmenter.from_pretrained(
        "ViT-B-16",
        pretrained="openai",
        checkpoint=args.checkpoint,
        host=host,
        proxy="dino",
        proxy_checkpoint=args.proxy_checkpoint,
        device=args.device,
        precision=args.precision,
    )
    if reference:
        seg.windows_per_forward = 1
    return seg


class WaitClock:
    """Time the host spends waiting for the device in ``to_host`` (the one wait of a call,
    in trees that have it): a call's time less this is the host's own work (launches,
    Python), which other threads of the process can slow down through the interpreter lock."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._module = None

    def __enter__(self) -> WaitClock:
        try:
            from fbseg.pipeline import postprocess
        except ImportError:  # an older tree
            return self
        if not hasattr(postprocess, "to_host"):
            return self
        self._module, self._original = postprocess, postprocess.to_host

        def timed(tensors):
            t0 = time.perf_counter()
            try:
                return self._original(tensors)
            finally:
                self.seconds += time.perf_counter() - t0

        postprocess.to_host = timed
        return self

    def __exit__(self, *exc) -> None:
        if self._module is not None:
            self._module.to_host = self._original


def model_only(seg, prepared, classes, per_call: int) -> dict:
    """Images/s of segment_batch on prepared images, per_call images per call, warm: the
    same calls are made once untimed first (a new window-batch shape costs a GPU library
    its plan once, which a long run pays once), then timed."""
    all_results(seg, prepared, classes, per_call)  # warm-up: shapes, kernels, caches, text
    _sync(seg.device)
    _reset_peak(seg.device)
    t0 = time.perf_counter()
    with WaitClock() as wait:
        for start in range(0, len(prepared), per_call):
            seg.segment_batch(prepared[start : start + per_call], classes)
        _sync(seg.device)
    seconds = time.perf_counter() - t0
    out = {
        "images_per_s": len(prepared) / seconds,
        "peak_mb": _peak_mb(seg.device),
        "host_ms_per_image": 1000 * (seconds - wait.seconds) / len(prepared),
        "wait_ms_per_image": 1000 * wait.seconds / len(prepared),
    }
    if seg.device.type == "cuda":
        out["host_waits"] = host_waits(seg, prepared[:per_call], classes)
    return out


def host_waits(seg, prepared, classes) -> int:
    """How often one ``segment_batch`` call makes the host wait for the GPU (each is a
    warning of ``torch.cuda.set_sync_debug_mode``)."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seg.segment_batch(prepared, classes)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def flops_per_image(seg, prepared, classes) -> float:
    """FLOPs of one image's segmentation (class-name text already cached), counted by
    torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    seg.encode_text(classes)
    with FlopCounterMode(display=False) as counter:
        seg.segment_batch(prepared[:1], classes)
    return float(counter.get_total_flops())


def operations_per_call(seg, prepared, classes, per_call: int) -> dict:
    """The operations one call of ``per_call`` images makes, counted at PyTorch's dispatcher:
    those that run a kernel (each a launch the host must make beside a GPU) and views, and
    how many of the kernels ran inside the window-batch forwards (``crop_logits`` where the
    Segmenter's module calls it: what CUDA graphs replay in one launch each). Works for any
    tree (it only calls ``segment_batch``; an older one may not split the count)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    segmenter_module = sys.modules[type(seg).__module__]
    inside = [False]

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.counts: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            kind = "views" if _is_view(func, args, out) else "kernels"
            self.counts[kind] += 1
            if inside[0] and kind == "kernels":
                self.counts["forward_kernels"] += 1
            return out

    plain = getattr(segmenter_module, "crop_logits", None)

    def forward(*args, **kwargs):
        inside[0] = True
        try:
            return plain(*args, **kwargs)
        finally:
            inside[0] = False

    counter = Count()
    if plain is not None:
        segmenter_module.crop_logits = forward
    try:
        with counter:
            seg.segment_batch(prepared[:per_call], classes)
    finally:
        if plain is not None:
            segmenter_module.crop_logits = plain
    _sync(seg.device)
    return {"images": min(per_call, len(prepared)), **counter.counts}


def _is_view(func, args, out) -> bool:
    """Whether an operation only made a view: a view op (``to`` with nothing to convert
    included) whose output shares its input's memory. ``to`` that converts is a kernel."""
    if not (func.is_view and isinstance(out, torch.Tensor) and args):
        return False
    first = args[0]
    return (
        isinstance(first, torch.Tensor)
        and out.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
    )


def top_kernels(seg, prepared, classes, per_call: int, n: int = 12) -> list[dict]:
    """The kernels that took most of one call's device time (on a GPU the kernels alone, each
    counted once; on a CPU the ops' own time): name, share, milliseconds, launches."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if seg.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        seg.segment_batch(prepared[:per_call], classes)
        _sync(seg.device)
    events = list(prof.key_averages())
    if seg.device.type == "cuda":  # the kernels themselves: an op's entry repeats their time
        from torch.autograd import DeviceType

        key = "self_device_time_total"
        events = [e for e in events if e.device_type == DeviceType.CUDA]
    else:
        key = "self_cpu_time_total"
    events.sort(key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key, 0) for e in events) or 1
    return [
        {
            "kernel": e.key[:90],
            "share": getattr(e, key, 0) / total,
            "ms": getattr(e, key, 0) / 1000,
            "count": e.count,
        }
        for e in events[:n]
    ]


def steady_rate(finished: list[float], group: int, wall: float) -> float:
    """Images per second once the pipeline is full. A group's outcomes are handed out
    together, just after the next group's model call; so the rate is taken between the
    first group's hand-out and the last but one's (each right after a model call), over the
    images in between — not from the first image to the last, which counts a group too many
    and, with few groups, divides by almost nothing. Too few groups: the whole run's rate."""
    groups = len(finished) // group
    if groups < 3:
        return len(finished) / wall
    first, last = finished[group - 1], finished[(groups - 1) * group - 1]
    return (groups - 2) * group / max(last - first, 1e-9)


def end_to_end(
    seg,
    folder: Path,
    classes,
    out: Path,
    per_call: int,
    io_threads: int | None = None,
    writer_processes: bool | None = None,
    reader_processes: bool | None = None,
    writers: int | None = None,
    **outputs,
) -> dict:
    """``segment_folder``'s steady rate (``steady_rate``, after a warm-up run); the fixed cost
    of a run — starting threads or writer processes, filling the pipeline — is reported
    apart as the time to the first image. And where the time went: each stage's busy time
    per image (read = decode in the reader threads, model = the caller's ``segment_batch``,
    write = render + write in the writers, as they report it)."""
    from fbseg.runs import stream
    from fbseg.runs.folder import segment_folder
    from fbseg.runs.outputs import OutputOptions

    opts = OutputOptions(out_dir=out, class_labels=classes.labels, overwrite=True, **outputs)
    run_args: dict = {"images_per_group": per_call}
    if io_threads:
        run_args["io_threads"] = io_threads
    if writer_processes is not None:
        run_args["writer_processes"] = writer_processes
    if reader_processes is not None:
        run_args["reader_processes"] = reader_processes
    if writers:
        run_args["writers"] = writers
    segment_folder(seg, [str(folder)], classes, opts, **run_args)  # warm-up run
    _sync(seg.device)
    busy = {"read": 0.0, "model": 0.0, "write": 0.0}
    model_calls: list[tuple[float, float]] = []

    def timed(stage: str, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                busy[stage] += time.perf_counter() - t0
                if stage == "model":
                    model_calls.append((t0, time.perf_counter()))

        return run

    def written(entry):  # the writer (thread or process) reports its own seconds
        try:
            busy["write"] += entry.write.result()[1]
        except Exception:  # a write that failed is the stream's to report
            pass
        return stream_written(entry)

    stream_written = stream._written
    patched = {"_load": timed("read", stream._load), "_written": written}
    originals = {name: getattr(stream, name) for name in patched}
    segment_batch = seg.segment_batch
    finished: list[float] = []
    try:
        for name, fn in patched.items():
            setattr(stream, name, fn)
        seg.segment_batch = timed("model", segment_batch)
        t0 = time.perf_counter()
        with WaitClock() as wait:
            run = segment_folder(
                seg,
                [str(folder)],
                classes,
                opts,
                on_outcome=lambda _: finished.append(time.perf_counter()),
                **run_args,
            )
        wall = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(stream, name, fn)
        del seg.segment_batch
    n = run.done_here
    return {
        "images_per_s": steady_rate(finished, per_call or 1, wall),
        "start_s": finished[0] - t0,
        "stage_ms_per_image": {k: 1000 * v / n for k, v in busy.items()},
        "model_busy_share": steady_share(model_calls, finished, per_call or 1),
        "wait_ms_per_image": 1000 * wait.seconds / n,
    }


def steady_share(calls: list[tuple[float, float]], finished: list[float], group: int) -> float:
    """The share of ``steady_rate``'s stretch that the model's calls took (their overlap with
    it); the whole run's where that rate is the whole run's."""
    groups = len(finished) // group
    if groups < 3:
        first, last = calls[0][0], finished[-1]
    else:
        first, last = finished[group - 1], finished[(groups - 1) * group - 1]
    inside = sum(max(0.0, min(b, last) - max(a, first)) for a, b in calls)
    return inside / max(last - first, 1e-9)


def voc_layout(folder: Path, root: Path) -> Path:
    """The JPEGs of ``folder`` as VOC21's validation split under ``root``, laid out as the
    dataset registry declares, each with a random label map of its size (timing only: the
    scores mean nothing)."""
    import shutil

    import numpy as np
    from PIL import Image

    from fbseg.eval.datasets import DATASETS

    spec = DATASETS.get("voc21")
    lay = spec.layout
    (root / lay.images).mkdir(parents=True, exist_ok=True)
    (root / lay.labels).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = []
    for path in sorted(folder.glob("*.jpg")):
        shutil.copyfile(path, root / lay.images / f"{path.stem}{lay.img_suffix}")
        with Image.open(path) as img:
            w, h = img.size
        label = rng.integers(0, spec.num_classes, (h, w), dtype=np.uint8)
        Image.fromarray(label).save(root / lay.labels / f"{path.stem}{lay.label_suffix}")
        ids.append(path.stem)
    (root / lay.split).parent.mkdir(parents=True, exist_ok=True)
    (root / lay.split).write_text("\n".join(ids) + "\n")
    return root


def eval_run(seg, root: Path, per_call: int) -> dict:
    """``fbseg eval``'s steady rate on the VOC21 split under ``root`` (``evaluate`` with its
    defaults for the device, nothing cached), after a warm-up run."""
    from fbseg.eval.datasets import DATASETS, find_samples
    from fbseg.eval.evaluate import evaluate

    spec = DATASETS.get("voc21")
    samples = find_samples(spec, root)
    evaluate(seg, spec, samples, images_per_call=per_call)
    finished: list[float] = []
    t0 = time.perf_counter()
    evaluate(
        seg,
        spec,
        samples,
        images_per_call=per_call,
        on_image=lambda _: finished.append(time.perf_counter()),
    )
    wall = time.perf_counter() - t0
    return {"images_per_s": steady_rate(finished, per_call, wall), "start_s": finished[0] - t0}


def doubled(folder: Path) -> Path:
    """A folder holding every image of ``folder`` twice (a longer steady stretch)."""
    import shutil

    twice = folder.with_name(folder.name + "-x2")
    twice.mkdir(exist_ok=True)
    for path in sorted(folder.glob("*.jpg")):
        for copy in ("a", "b"):
            shutil.copyfile(path, twice / f"{path.stem}{copy}.jpg")
    return twice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--hosts", nargs="+", default=["proxyclip", "naclip"])
    ap.add_argument("--checkpoint")
    ap.add_argument("--proxy-checkpoint")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument(
        "--no-graphs", action="store_true", help="no rows with CUDA graphs (CUDA only anyway)"
    )
    ap.add_argument("--tree", help="import fbseg from this checkout")
    ap.add_argument("--model-only", action="store_true", help="model-only rows and FLOPs only")
    ap.add_argument("--windows", type=int, nargs="*", default=[], help="other window batches")
    ap.add_argument(
        "--post-pass-mb",
        type=float,
        nargs="*",
        default=[],
        help="model-only rows (and operations per call) at other post-processing pass sizes "
        "(0: image by image)",
    )
    ap.add_argument("--groups", type=int, nargs="*", default=[], help="other DIR --batch values")
    ap.add_argument(
        "--io-threads",
        type=int,
        nargs="*",
        default=[],
        help="other DIR reader threads (and writer threads where writers are threads)",
    )
    ap.add_argument(
        "--worker-nice",
        type=int,
        help="also run segment DIR (plain, --overlay) with the worker processes at this niceness",
    )
    ap.add_argument(
        "--writers",
        type=int,
        nargs="*",
        default=[],
        help="also run segment DIR (plain, --overlay) with this many writer processes",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    try:
        from fbseg.eval.datasets import DATASETS
    except ImportError:  # a tree from before the package layout (--tree, --model-only)
        from fbseg.datasets import DATASETS
    try:
        from fbseg.pipeline.device import default_images_per_call
    except ImportError:  # an older tree: segment_folder's own default
        default_images_per_call = None

    with tempfile.TemporaryDirectory(prefix="fbseg-bench-") as work:
        report = measure_all(args, Path(work), DATASETS, default_images_per_call)
    for host, flops in report["flops_per_image"].items():
        print(f"{host}: {flops / 1e12:.3f} TFLOP per image (FlopCounterMode)")
    for host, ops in report["operations"].items():
        print(
            f"{host}: one call of {ops['images']} images makes {ops.get('kernels', 0)} operations "
            f"that run a kernel"
            + (
                f" ({ops['forward_kernels']} of them in the forwards)"
                if "forward_kernels" in ops
                else ""
            )
            + f" and {ops.get('views', 0)} views"
        )
    for host, kernels in report["kernels"].items():
        print(f"top kernels of one call, {host} (own device time):")
        for k in kernels:
            print(f"  {100 * k['share']:5.1f}% {k['ms']:8.2f} ms {k['count']:6d}×  {k['kernel']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def print_row(r: dict) -> None:
    """One table row, printed as soon as it is measured (a run cut short keeps its figures)."""
    peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else ""
    tf = f"{r['tflops']:.2f}" if "tflops" in r else ""
    of = f"{r['of_model']:.2f}×" if "of_model" in r else ""
    waits = str(r["host_waits"]) if "host_waits" in r else ""
    print(
        f"{r['host']:<10} {r['what']:<50} {r['images_per_s']:>8.2f} {peak:>8} {tf:>8} "
        f"{of:>8} {waits:>5}",
        flush=True,
    )
    if "stage_ms_per_image" in r:
        stages = ", ".join(
            f"{k} {v:.1f}" + (f" (waiting {r['wait_ms_per_image']:.1f})" if k == "model" else "")
            for k, v in r["stage_ms_per_image"].items()
        )
        print(
            f"{'':<10}   busy ms/image: {stages}; model busy {100 * r['model_busy_share']:.0f}% "
            f"of the steady stretch; start {r['start_s']:.2f} s",
            flush=True,
        )
    elif "host_ms_per_image" in r:
        print(
            f"{'':<10}   ms/image: the host's own work {r['host_ms_per_image']:.1f}, "
            f"waiting for the device {r['wait_ms_per_image']:.1f}",
            flush=True,
        )


def _add(report: dict, row: dict) -> None:
    report["rows"].append(row)
    print_row(row)


def measure_all(args, tmp: Path, datasets, default_images_per_call) -> dict:
    """Every row of the table; weights, images and outputs live under ``tmp``."""
    import fbseg

    tree = str(Path(fbseg.__file__).resolve().parent.parent)
    if not (args.checkpoint and args.proxy_checkpoint):
        args.checkpoint, args.proxy_checkpoint = random_weights(tmp)
    folder = tmp / "images"
    make_folder(folder, args.images)
    folder_x2 = folder if args.model_only else doubled(folder)  # a longer run for DIR rows
    voc_root = None if args.model_only else voc_layout(folder_x2, tmp / "voc")  # eval rows
    classes = datasets.get("voc21").classes()  # 21 classes, 46 names
    report: dict = {"rows": [], "kernels": {}, "operations": {}, "tree": tree}
    for host in args.hosts:
        seg = _segmenter(args, host)
        if not report["rows"]:
            print_header(seg.device, tree, args.images)
        device = seg.device
        prepared = [seg.prepare(p) for p in sorted(folder.glob("*.jpg"))]
        flops = flops_per_image(seg, prepared, classes)
        best = 0.0
        for per_call in args.batches:
            r = model_only(seg, prepared, classes, per_call)
            best = max(best, r["images_per_s"])
            _add(
                report,
                {
                    "host": host,
                    "what": f"model only, {per_call}/call",
                    **r,
                    "tflops": flops * r["images_per_s"] / 1e12,
                },
            )
        # the window batch of the fastest model-only row at the largest images per call
        fastest_windows: tuple[float, int | None] = (best, None)
        for windows in args.windows:
            keep, seg.windows_per_forward = seg.windows_per_forward, windows
            what = f"{max(args.batches)}/call, {windows} windows/forward"
            r = model_only(seg, prepared, classes, max(args.batches))
            if r["images_per_s"] > fastest_windows[0]:
                fastest_windows = (r["images_per_s"], windows)
            report["operations"][f"{host}, {what}"] = operations_per_call(
                seg, prepared, classes, max(args.batches)
            )
            seg.windows_per_forward = keep
            _add(
                report,
                {
                    "host": host,
                    "what": f"model only, {what}",
                    **r,
                    "tflops": flops * r["images_per_s"] / 1e12,
                },
            )
        report["flops_per_image"] = {**report.get("flops_per_image", {}), host: flops}
        report["operations"][host] = operations_per_call(seg, prepared, classes, max(args.batches))
        for mb in args.post_pass_mb if hasattr(seg, "post_pass_bytes") else []:
            keep, seg.post_pass_bytes = seg.post_pass_bytes, int(mb * 2**20)
            r = model_only(seg, prepared, classes, max(args.batches))
            what = f"{max(args.batches)}/call, post-processing {mb:g} MB per pass"
            _add(report, {"host": host, "what": f"model only, {what}", **r})
            report["operations"][f"{host}, {what}"] = operations_per_call(
                seg, prepared, classes, max(args.batches)
            )
            seg.post_pass_bytes = keep
        # CUDA graphs last (model-only, then the default folder run): rows already printed
        # stay whatever a replay does to the device
        graphs = device.type == "cuda" and hasattr(seg, "graphs") and not args.no_graphs
        if args.model_only:
            if graphs:
                graph_rows(args, seg, prepared, classes, flops, report, host)
            continue
        # ``segment DIR`` at a group size and settings: every folder row of this host
        folder_run = functools.partial(end_to_end, seg, folder_x2, classes, tmp / "out")

        report["kernels"][host] = top_kernels(seg, prepared, classes, max(args.batches))
        default_group = default_images_per_call(device) if default_images_per_call else None
        from fbseg.pipeline.device import (
            default_io_threads,
            default_reader_processes,
            default_writer_process_count,
            default_writer_processes,
        )

        processes = default_writer_processes(device)
        readers_apart = default_reader_processes(device)
        writer_note = (
            f", {default_writer_process_count(device)} writer processes" if processes else ""
        )
        if readers_apart:
            writer_note += f", {default_io_threads(device)} reader processes"
        for label, outputs in (
            ("segment DIR", {}),
            ("segment DIR --overlay", {"overlay": True}),
            ("segment DIR --masks per-class", {"masks": "per-class"}),
            ("segment DIR --save-probs", {"save_probs": True}),
        ):
            if "masks" in outputs:
                from fbseg.runs.outputs import MaskMode

                outputs = {"masks": MaskMode.PER_CLASS}
            r = folder_run(default_group, writer_processes=processes, **outputs)
            _add(
                report,
                {
                    "host": host,
                    "what": f"{label} (group {default_group}{writer_note})",
                    **r,
                    "of_model": r["images_per_s"] / best,
                },
            )
        if fastest_windows[1] is not None:  # the folder run at the faster window batch
            keep, seg.windows_per_forward = seg.windows_per_forward, fastest_windows[1]
            r = folder_run(default_group, writer_processes=processes)
            seg.windows_per_forward = keep
            what = f"segment DIR (group {default_group}, {fastest_windows[1]} windows/forward)"
            _add(
                report,
                {
                    "host": host,
                    "what": what,
                    **r,
                    "of_model": r["images_per_s"] / fastest_windows[0],
                },
            )
        r = eval_run(seg, voc_root, default_group)
        what = f"eval voc21 (group {default_group}" + (
            ", reader processes)" if readers_apart else ")"
        )
        _add(report, {"host": host, "what": what, **r, "of_model": r["images_per_s"] / best})
        # the defaults against other settings: is the default group the fastest tried?
        others = [(g, None, None, None) for g in args.groups if g != default_group]
        others += [(default_group, t, None, None) for t in args.io_threads]
        if readers_apart:  # the same with decoding in the reader threads
            others += [(default_group, None, None, False)]
        if processes:  # the same with writer threads
            others += [(default_group, None, False, None)]
        for group, threads, write_apart, read_apart in others:
            r = folder_run(
                group, io_threads=threads, writer_processes=write_apart, reader_processes=read_apart
            )
            what = f"segment DIR (group {group}"
            what += f", {threads} readers" if threads else ""
            what += ", decoding in threads" if read_apart is False else ""
            what += ", writer threads)" if write_apart is False else ")"
            _add(report, {"host": host, "what": what, **r, "of_model": r["images_per_s"] / best})
        # the worker processes yielding cores to the thread that drives the model: at a
        # lower priority, or fewer writers; plain and with overlays
        yielding = []
        if processes and args.worker_nice is not None:
            niced = functools.partial(workers_niced, args.worker_nice)
            yielding.append((f"workers at nice {args.worker_nice}", niced, {}))
        for count in args.writers if processes else []:
            yielding.append(
                (f"{count} writer processes", contextlib.nullcontext, {"writers": count})
            )
        for setting, context, run_args in yielding:
            for label, outputs in (
                ("segment DIR", {}),
                ("segment DIR --overlay", {"overlay": True}),
            ):
                with context():
                    r = folder_run(default_group, writer_processes=True, **run_args, **outputs)
                what = f"{label} (group {default_group}, {setting})"
                _add(
                    report, {"host": host, "what": what, **r, "of_model": r["images_per_s"] / best}
                )
        if graphs:  # model only, then the default run, its forwards replayed as CUDA graphs
            # (at the window batch of the fastest graph row)
            graph_best, graph_windows = graph_rows(
                args, seg, prepared, classes, flops, report, host
            )
            with_graphs(seg)
            keep, seg.windows_per_forward = seg.windows_per_forward, graph_windows
            r = folder_run(default_group, writer_processes=processes)
            seg.graphs, seg.windows_per_forward = None, keep
            what = f"segment DIR, CUDA graphs (group {default_group}"
            what += f", {graph_windows} windows/forward)" if graph_windows else ")"
            _add(
                report,
                {"host": host, "what": what, **r, "of_model": r["images_per_s"] / graph_best},
            )
        del seg, folder_run  # the model's memory goes before the reference form's
        if not args.no_reference:
            ref = _segmenter(args, host, reference=True)
            r = model_only(ref, prepared[: max(4, len(prepared) // 4)], classes, 1)
            _add(report, {"host": host, "what": "reference form, 1/call", **r})
            del ref
            import reference_form

            reference_form.restore()
    report["device"] = device_name(device)
    return report


@contextlib.contextmanager
def workers_niced(niceness: int):
    """Reader and writer processes started meanwhile run at ``niceness``: where they contend
    for a core with the thread that drives the model, the scheduler favours that thread."""
    from fbseg.runs import worker_pool

    start = worker_pool._start_worker

    def niced():
        worker = start()
        os.setpriority(os.PRIO_PROCESS, worker.pid, niceness)
        return worker

    worker_pool._start_worker = niced
    try:
        yield
    finally:
        worker_pool._start_worker = start


def with_graphs(seg) -> None:
    """Give ``seg`` CUDA-graph replays of its forwards, recorded anew."""
    from fbseg.pipeline.graphs import GraphedForwards

    seg.graphs = GraphedForwards()


def all_results(seg, prepared, classes, per_call: int) -> list:
    """Every prepared image's result, ``per_call`` images per ``segment_batch`` call."""
    return [
        r
        for start in range(0, len(prepared), per_call)
        for r in seg.segment_batch(prepared[start : start + per_call], classes)
    ]


def graph_rows(
    args, seg, prepared, classes, flops: float, report: dict, host: str
) -> tuple[float, int | None]:
    """Model-only rows with the forwards replayed as CUDA graphs, and how their results
    compare with the forwards run one kernel at a time (the same kernels on the same inputs:
    equal labels are expected). Returns the best of those rows' images/s and its window
    batch (None: the Segmenter's own)."""
    per_call = max(args.batches)
    eager = all_results(seg, prepared, classes, per_call)
    with_graphs(seg)
    try:
        for _ in range(2):  # each batch shape's first sight, then its recording
            replayed = all_results(seg, prepared, classes, per_call)
        same = sum(
            int((a.compact_labels == b.compact_labels).sum()) for a, b in zip(eager, replayed)
        )
        pixels = sum(a.compact_labels.size for a in eager)
        stats = max(
            float(abs(a.class_stats - b.class_stats).max()) for a, b in zip(eager, replayed)
        )
        report.setdefault("graph_agreement", {})[host] = {
            "pixels_equal": same / pixels,
            "stats_max_abs_diff": stats,
            "recorded": seg.graphs.recorded,
        }
        print(
            f"{host}: CUDA graphs: {seg.graphs.recorded} recorded; labels equal on "
            f"{100 * same / pixels:.4f}% of pixels; class statistics differ by at most {stats:.3g}",
            flush=True,
        )
        best: tuple[float, int | None] = (0.0, None)
        for windows in [None, *args.windows]:
            keep = seg.windows_per_forward
            if windows is not None:  # recorded anew, within the limit of recordings
                with_graphs(seg)
                seg.windows_per_forward = windows
                for _ in range(2):  # first sights, recordings: model_only's warm-up checks
                    all_results(seg, prepared, classes, per_call)
            r = model_only(seg, prepared, classes, per_call)
            seg.windows_per_forward = keep
            if r["images_per_s"] > best[0]:
                best = (r["images_per_s"], windows)
            what = f"model only, {per_call}/call, CUDA graphs"
            what += f", {windows} windows/forward" if windows is not None else ""
            what += f" ({seg.graphs.recorded} recorded)"
            _add(
                report,
                {"host": host, "what": what, **r, "tflops": flops * r["images_per_s"] / 1e12},
            )
        return best
    finally:
        seg.graphs = None


def device_name(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )


def print_header(device: torch.device, tree: str, images: int) -> None:
    print(
        f"device: {device_name(device)}; fbseg from {tree}; {images} images of "
        "300–600 px; VOC21's 46 names; random weights unless --checkpoint"
    )
    print(
        f"{'host':<10} {'what':<50} {'img/s':>8} {'peak MB':>8} {'TFLOP/s':>8} {'of model':>8} "
        f"{'waits':>5}",
        flush=True,
    )


if __name__ == "__main__":
    main()
