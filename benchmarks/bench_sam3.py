"""SAM 3 engine speed and memory with the real-size architecture (random weights: timings are
real, masks meaningless): image encoding, then 2 / 20 / 150 names against the cached image
features, on the CPU or a GPU.

    python benchmarks/bench_sam3.py [--device cuda] [--names 2 20 150] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--names", type=int, nargs="+", default=[2, 20])
    ap.add_argument("--per-forward", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from transformers import Sam3Config, Sam3Model

    from fbseg.models.sam3 import Sam3Parts, _processor_parts
    from fbseg.pipeline.sam3 import Sam3Segmenter

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = Sam3Model(Sam3Config()).eval()
    build_s = time.perf_counter() - t0
    image_processor, tokenizer = _processor_parts(None, model)
    seg = Sam3Segmenter(
        Sam3Parts(model, image_processor, tokenizer, "random"),
        device=args.device,
        precision=args.precision,
        names_per_forward=args.per_forward,
    )
    cuda = seg.device.type == "cuda"
    rgb = np.array(Image.open(ROOT / "assets" / "cat.jpg").convert("RGB"))
    prepared = seg.prepare(rgb)
    words = [f"thing {i}" for i in range(max(args.names))]
    seg.encode_text(words)  # text once per run, as a folder run does

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    with torch.inference_mode():
        pixels = prepared.pixel_values[None].to(seg.device, seg.dtype)
        seg.model.get_vision_features(pixel_values=pixels)  # warm-up
        encode_s = timed(lambda: seg.model.get_vision_features(pixel_values=pixels))
    rows = []
    for n in args.names:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds = timed(lambda n=n: seg.segment(prepared, ",".join(words[:n])))
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        rows.append({"names": n, "seconds_per_image": seconds, "peak_mb": peak})
    device = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device: {device}; real-size SAM 3, random weights (built in {build_s:.0f} s); "
        f"image encoder alone: {encode_s:.3f} s; {args.per_forward} names per forward"
    )
    print(f"{'names':>6} {'s / image':>10} {'peak MB':>9}")
    for r in rows:
        print(f"{r['names']:>6} {r['seconds_per_image']:>10.3f} {r['peak_mb']:>9.0f}")
    if args.json:
        args.json.write_text(
            json.dumps({"device": device, "encode_s": encode_s, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
