"""What a writer spends on one image's files: ``render_outputs`` (the bytes of every file,
nothing written to disk) for each kind of run, in ms of one core per image, with the bytes
written per image.

Beside a GPU the writers (one process each) are what bounds `segment DIR --overlay` and
`--masks per-class`, and every core they use is one the process that drives the model and
the readers do not get; on a CPU they share the cores with the model.

Inputs: JPEGs of 300–600 px cut from `assets/` (as the other benchmarks), and label maps
shaped like a model's: smooth random class scores on a 1/16 grid, upsampled bilinearly,
argmax (about 15–20 of VOC21's 21 classes per image; their softmax for `--save-probs`); the
host-only labels for `--compare` are the same made with another seed.

    python benchmarks/bench_outputs.py [--images 40] [--repeats 5] [--json out.json]
    python benchmarks/bench_outputs.py --tree DIR   # another checkout, for a before/after
"""

from __future__ import annotations

import argparse
import inspect
import json
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
import torch.nn.functional as F  # noqa: E402
from bench_pipeline import make_folder  # noqa: E402

CLASSES = 21
MODES = {  # name → OutputOptions fields
    "masks + JSON": {},
    "--overlay": {"overlay": True},
    "--masks per-class": {"masks": "per-class"},
    "--compare": {"compare": True},
    "--save-probs": {"save_probs": True},
}


def model_like(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (h, w) uint8 and probabilities (K, h, w) float32 as a sliding-window model's
    look: smooth random scores for ``CLASSES`` classes on a 1/16 grid, upsampled bilinearly,
    softmax and argmax."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(1, CLASSES, h // 16 + 1, w // 16 + 1, generator=g)
    scores = scores * 3 * torch.rand(1, CLASSES, 1, 1, generator=g)  # some classes dominate
    up = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False)[0]
    return up.argmax(0).numpy().astype(np.uint8), torch.softmax(2 * up, 0).numpy()


def results(folder: Path, compare: bool):
    """(rgb, make the result, item) per image of ``folder``; with host-only labels for
    ``compare``. Each repeat makes its results afresh, as the engine hands them over: the
    probabilities formed on first read (in float16 directly where the tree can)."""
    from fbseg.classes import parse_classes
    from fbseg.io import read_image
    from fbseg.pipeline.postprocess import lazy_probs
    from fbseg.result import SegmentationResult
    from fbseg.runs.inputs import InputItem

    rounds_itself = "dtype" in inspect.signature(lazy_probs).parameters
    classes = parse_classes(",".join(f"class{k}" for k in range(CLASSES)))
    out = []
    for i, path in enumerate(sorted(folder.glob("*.jpg"))):
        rgb = read_image(path)
        h, w = rgb.shape[:2]
        labels, probs = model_like(h, w, seed=i)
        stats = np.zeros((3, CLASSES))
        stats[0] = np.bincount(labels.ravel(), minlength=CLASSES)
        stats[1:] = 0.5
        baseline = model_like(h, w, seed=1000 + i)[0] if compare else None

        def make(labels=labels, probs=torch.from_numpy(probs), stats=stats, baseline=baseline):
            half = {}
            if rounds_itself:
                half["probs_float16"] = lazy_probs(lambda: probs, torch.float16)
            return SegmentationResult(
                labels,
                lazy_probs(lambda: probs),
                classes.labels,
                classes.names,
                {"timings": {"total_s": 0.0}},
                baseline,
                class_stats=stats,
                **half,
            )

        out.append((rgb, make, InputItem(path, Path(path.stem), path.name)))
    return out, classes


def time_mode(images, classes, fields: dict, out_dir: Path, repeats: int) -> dict:
    """Median over ``repeats`` of the mean ms per image, and the mean bytes per image."""
    from fbseg.runs.outputs import MaskMode, OutputOptions, render_outputs

    if "masks" in fields:
        fields = {**fields, "masks": MaskMode(fields["masks"])}
    opts = OutputOptions(out_dir=out_dir, class_labels=classes.labels, **fields)
    per_run, sizes = [], []
    for _ in range(repeats + 1):  # the first warms the caches (fonts, legend rows)
        made = [(rgb, make(), item) for rgb, make, item in images]
        t0 = time.perf_counter()
        sizes = [
            sum(len(b) for b in render_outputs(result, rgb, item, opts).values())
            for rgb, result, item in made
        ]
        per_run.append((time.perf_counter() - t0) / len(images) * 1e3)
    return {"ms_per_image": statistics.median(per_run[1:]), "kb_per_image": np.mean(sizes) / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tree", help="import fbseg from this checkout")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a writer process is one thread
    import fbseg

    tree = str(Path(fbseg.__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_folder(folder, args.images)
        rows = {}
        for name, fields in MODES.items():
            images, classes = results(folder, compare=bool(fields.get("compare")))
            rows[name] = time_mode(images, classes, fields, Path(tmp), args.repeats)
    print(f"fbseg from {tree}; {args.images} images of 300–600 px, {CLASSES} classes, one core")
    print(f"{'outputs':20s} {'ms/image':>9s} {'KB/image':>9s}")
    for name, r in rows.items():
        print(f"{name:20s} {r['ms_per_image']:9.2f} {r['kb_per_image']:9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"tree": tree, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
