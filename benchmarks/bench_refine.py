"""Seconds PAMR adds per image (the refinement alone, on logits at the image size), and its
peak memory on CUDA. Runs on the CPU and, where one is available, on a GPU.

    python benchmarks/bench_refine.py [--device cpu cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fbseg.pipeline.refine import pamr

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # (image, long side, names, steps, dilations)
    ("cat.jpg", 451, 46, 10, (8, 16)),
    ("cat.jpg", 451, 171, 10, (8, 16)),
    ("cat.jpg", 1024, 46, 10, (8, 16)),
    ("cat.jpg", 1024, 171, 10, (8, 16)),
    ("cat.jpg", 451, 46, 50, (1, 2, 4, 8, 12, 24)),
]


def _guide(name: str, long_side: int) -> torch.Tensor:
    img = Image.open(ROOT / "assets" / name).convert("RGB")
    scale = long_side / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
    return (x - 0.45) / 0.27


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--device", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for device in args.device:
        for name, long_side, names, steps, dilations in CASES:
            guide = _guide(name, long_side).to(device)
            logits = torch.randn(names, *guide.shape[1:], device=device) * 0.05
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                pamr(guide, logits, steps, dilations)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
            rows.append(
                {
                    "device": device,
                    "image": f"{guide.shape[2]}×{guide.shape[1]}",
                    "names": names,
                    "steps": steps,
                    "dilations": list(dilations),
                    "seconds": min(times),
                    "peak_mb": peak,
                }
            )
    print(
        f"{'device':<7} {'image':<10} {'names':>5} {'steps':>5} {'dilations':<18} {'seconds':>8} {'peak MB':>8}"
    )
    for r in rows:
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "–"
        print(
            f"{r['device']:<7} {r['image']:<10} {r['names']:>5} {r['steps']:>5} "
            f"{','.join(map(str, r['dilations'])):<18} {r['seconds']:>8.3f} {peak:>8}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
