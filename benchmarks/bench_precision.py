"""How often fp16 / bf16 labels agree with fp32 (the backbones in low precision, FSA's decision
always in fp32), on the photos in assets/, per host; and whether the probabilities rounded to
float16 on the device for ``--save-probs`` have numpy's bits, for every float32 in [0, 1].

Without --checkpoint/--proxy-checkpoint, random ViT-B-16 and DINO ViT-B/8 weights are written
to a temporary folder and loaded as the default network (``--pretrained openai``: QuickGELU):
the agreement is real, the masks meaningless. Random weights give flatter probabilities than
real ones, so the margin column (pixels whose fp32 top-2 probability margin exceeds 0.01) is
the one that carries over.

    python benchmarks/bench_precision.py [--device cuda] [--hosts proxyclip naclip]
        [--classes "cat,rug,wall"] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from bench_pipeline import random_weights  # noqa: E402

MARGIN = 0.01


def _classes(text: str | None):
    from fbseg.classes import parse_classes
    from fbseg.eval.datasets import DATASETS

    return parse_classes(text) if text else DATASETS.get("voc21").classes()


def agreement(ref_labels: np.ndarray, ref_probs: np.ndarray, labels: np.ndarray) -> dict:
    """Share of pixels with the same label, overall and where fp32's top-2 margin > MARGIN."""
    top2 = np.sort(ref_probs, axis=0)[-2:]
    sure = (top2[1] - top2[0]) > MARGIN
    same = ref_labels == labels
    return {
        "all": float(same.mean()),
        "margin": float(same[sure].mean()) if sure.any() else 1.0,
        "margin_share": float(sure.mean()),
    }


def rounding_check(device: str, chunk: int = 2**26) -> dict:
    """Whether the probabilities that ``--save-probs`` stores, rounded to float16 on
    ``device`` (``lazy_probs``), have numpy's bits for every float32 in [0, 1]: the files
    were rounded by numpy before, and a resumed run compares them byte for byte."""
    import torch

    from fbseg.pipeline.postprocess import lazy_probs

    one = int(np.float32(1).view(np.uint32))
    differ = 0
    for start in range(0, one + 1, chunk):
        bits = np.arange(start, min(start + chunk, one + 1), dtype=np.uint32)
        values = torch.from_numpy(bits.view(np.float32)).to(device)
        half = lazy_probs(lambda v=values: v, torch.float16)()
        differ += int(
            (half.view(np.uint16) != bits.view(np.float32).astype(np.float16).view(np.uint16)).sum()
        )
    return {"device": device, "values": one + 1, "differ": differ}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--hosts", nargs="+", default=["proxyclip", "naclip"])
    ap.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    ap.add_argument(
        "--images", nargs="+", default=sorted(str(p) for p in (ROOT / "assets").glob("*.jpg"))
    )
    ap.add_argument("--classes", default=None, help="default: VOC21's 21 classes (46 names)")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--proxy-checkpoint", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-rounding", action="store_true", help="skip the float16 rounding check")
    args = ap.parse_args()
    from fbseg.pipeline.segmenter import Segmenter

    tmp = tempfile.TemporaryDirectory()
    os.environ.setdefault("FBSEG_CACHE", str(Path(tmp.name) / "cache"))
    clip_ckpt, proxy_ckpt = args.checkpoint, args.proxy_checkpoint
    if clip_ckpt is None or proxy_ckpt is None:
        clip_ckpt, proxy_ckpt = random_weights(Path(tmp.name), proxy_seed=1)
    classes = _classes(args.classes)
    rows = []
    for host in args.hosts:

        def build(precision: str, host: str = host) -> Segmenter:
            return Segmenter.from_pretrained(
                "ViT-B-16",
                pretrained="openai",
                checkpoint=clip_ckpt,
                host=host,
                proxy="dino",
                proxy_checkpoint=proxy_ckpt,
                device=args.device,
                precision=precision,
            )

        ref = build("fp32")
        refs = [ref.segment(image, classes) for image in args.images]
        device = str(ref.device)
        del ref
        for precision in args.precisions:
            seg = build(precision)
            for image, r in zip(args.images, refs):
                out = seg.segment(image, classes)
                rows.append(
                    {
                        "host": host,
                        "precision": precision,
                        "image": Path(image).name,
                        "device": device,
                        **agreement(r.labels, r.probs, out.labels),
                    }
                )
            del seg
    print(
        f"{'host':<10} {'precision':<9} {'image':<12} {'agree (all)':>12} "
        f"{'agree (margin>0.01)':>20} {'margin share':>13}"
    )
    for r in rows:
        print(
            f"{r['host']:<10} {r['precision']:<9} {r['image']:<12} {100 * r['all']:>11.2f}% "
            f"{100 * r['margin']:>19.2f}% {100 * r['margin_share']:>12.1f}%"
        )
    print(
        f"device: {rows[0]['device'] if rows else '-'}; random weights unless --checkpoint given",
        file=sys.stderr,
    )
    rounding = None
    if not args.no_rounding and rows:
        rounding = rounding_check(rows[0]["device"])
        print(
            f"float16 rounding on {rounding['device']}: {rounding['differ']} of the "
            f"{rounding['values']:,} float32 values in [0, 1] differ from numpy's"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "rounding": rounding}, indent=2))


if __name__ == "__main__":
    main()
