"""What `fbseg eval` spends counting one image's pixels against its labels
(``area_counts``), per dataset's map size, in ms per map: on one thread, and the wall time
per map with two threads counting at once. Where two threads halve it, counting runs
without the interpreter lock, so the thread that drives the model is left alone (eval counts
in its reader threads while the model runs the next group).

Maps: random labels with a tenth of the pixels at the ignore index and predictions that agree
on 70% of the pixels (the count's cost does not depend on the shapes in them).

    python benchmarks/bench_eval.py [--repeats 40] [--json out.json]
    python benchmarks/bench_eval.py --tree DIR   # another checkout, for a before/after
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if "--tree" in sys.argv:  # before fbseg is imported anywhere
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import numpy as np  # noqa: E402

MAPS = [  # dataset, (height, width) of a typical validation image, classes
    ("voc21", (375, 500), 21),
    ("ade20k", (512, 683), 150),
    ("coco-stuff", (480, 640), 171),
    ("cityscapes", (1024, 2048), 19),
]


def timed(count, pred, label, classes: int, repeats: int, threads: int) -> float:
    """Best of 3 rounds: ms of wall time per map, ``repeats`` maps per round."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        if threads == 1:
            for _ in range(repeats):
                count(pred, label, classes)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda _: count(pred, label, classes), range(repeats)))
        best = min(best, (time.perf_counter() - t0) / repeats)
    return 1000 * best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--tree", help="import fbseg from this checkout")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import fbseg
    from fbseg.eval.metrics import area_counts

    print(f"fbseg from {Path(fbseg.__file__).resolve().parent.parent}")
    print("| dataset | map | classes | ms per map, 1 thread | ms per map, 2 threads at once |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    rows = []
    for name, (h, w), classes in MAPS:
        label = rng.integers(0, classes, (h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.1] = 255
        pred = np.where(rng.random((h, w)) < 0.7, label, rng.integers(0, classes, (h, w)))
        pred = (pred % classes).astype(np.uint8)
        one = timed(area_counts, pred, label, classes, args.repeats, 1)
        two = timed(area_counts, pred, label, classes, args.repeats, 2)
        rows.append({"dataset": name, "size": [w, h], "classes": classes, "ms": one, "ms_2": two})
        print(f"| {name} | {w}×{h} | {classes} | {one:.2f} | {two:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
