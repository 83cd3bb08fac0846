"""The window-batch shapes a folder run makes, with and without ``few_shapes`` (what the
Segmenter uses when its forwards are replayed as CUDA graphs): per window batch size, how
many distinct batch shapes the run meets, how many forwards it makes, and how many of them a
recording could replay (every forward of a shape after the two that see and record it).
Counted from each image's windows at the default protocol (``window_boxes``, ``next_batch``),
so it runs anywhere in a second; a recorded forward's speed needs a GPU
(``bench_throughput.py``).

    python benchmarks/bench_shapes.py [--images 200] [--per-call 16] [--windows 8 16 32 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def shapes_of_run(sizes, per_call: int, per_forward: int, few_shapes: bool) -> Counter:
    """How often each (crop size, batch size) occurs in a run over images of ``sizes``
    (protocol sizes), ``per_call`` images per call."""
    from fbseg.pipeline.config import DEFAULTS
    from fbseg.pipeline.window import next_batch, window_boxes

    runs: Counter = Counter()
    for first in range(0, len(sizes), per_call):
        windows: Counter = Counter()
        for h, w in sizes[first : first + per_call]:
            for y1, y2, x1, x2 in window_boxes(h, w, DEFAULTS.window, DEFAULTS.stride):
                windows[(y2 - y1, x2 - x1)] += 1
        for crop, left in windows.items():
            while left:
                batch = next_batch(left, per_forward, few_shapes)
                runs[(crop, batch)] += 1
                left -= batch
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--per-call", type=int, default=16)
    ap.add_argument("--windows", type=int, nargs="+", default=[8, 16, 32, 64])
    args = ap.parse_args()
    from bench_throughput import make_folder

    from fbseg.pipeline.config import DEFAULTS
    from fbseg.pipeline.window import protocol_size

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_folder(folder, args.images)
        sizes = []
        for path in sorted(folder.glob("*.jpg")):
            with Image.open(path) as im:
                sizes.append(protocol_size(im.height, im.width, DEFAULTS.short_side))
    print(
        f"{args.images} JPEGs of 300–600 px cut from assets/, {args.per_call} per call, "
        f"window {DEFAULTS.window} / stride {DEFAULTS.stride}"
    )
    print(
        f"{'windows/forward':>15} {'few_shapes':>10} {'shapes':>7} {'forwards':>9} {'replayable':>11}"
    )
    for per_forward in args.windows:
        for few in (False, True):
            runs = shapes_of_run(sizes, args.per_call, per_forward, few)
            forwards = sum(runs.values())
            replayable = sum(n - 2 for n in runs.values() if n > 2)
            print(
                f"{per_forward:>15} {str(few):>10} {len(runs):>7} {forwards:>9} "
                f"{replayable:>5} ({100 * replayable / forwards:.0f}%)"
            )


if __name__ == "__main__":
    main()
