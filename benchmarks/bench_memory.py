"""Peak memory of one image above the weights, at the heavy settings: ProxyCLIP with a SAM
ViT-B proxy and COCO-Stuff's 171 classes; ProxyCLIP with DINO ViT-B/8 at the ADE protocol
(short side 448) and ADE's 150 classes. ``assets/cat.jpg``, FSA on.

On CUDA: ``max_memory_allocated`` minus what was allocated before the call. Everywhere: the
peak of the tensors the call makes (``fbseg.tensor_memory``; the CPU has no allocator
statistics), with the largest of them. Random weights of the real architectures are written
to a temporary folder; class-name embeddings are random (the text tower is not measured).

    python benchmarks/bench_memory.py [--device cuda] [--cases sam dino] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_pipeline import random_weights  # noqa: E402

CASES = {  # name: (proxy, timm name, dataset, short side)
    "sam": ("sam", "samvit_base_patch16.sa1b", "coco-stuff", 336),
    "dino": ("dino", "vit_base_patch8_224.dino", "ade20k", 448),
}


def measure(case: str, device: str, precision: str, folder: Path) -> dict:
    from fbseg.eval.datasets import DATASETS
    from fbseg.pipeline.segmenter import Segmenter
    from fbseg.tensor_memory import TensorMemory

    proxy, timm_name, dataset, short_side = CASES[case]
    clip_path, proxy_path = random_weights(folder, timm_name)
    seg = Segmenter.from_pretrained(
        "ViT-B-16",
        pretrained="openai",
        checkpoint=clip_path,
        host="proxyclip",
        proxy=proxy,
        proxy_checkpoint=proxy_path,
        device=device,
        precision=precision,
        text_cache=False,
    )
    classes = DATASETS.get(dataset).classes()
    names = classes.flat_names
    g = torch.Generator().manual_seed(0)
    for name, emb in zip(
        names, torch.nn.functional.normalize(torch.randn(len(names), 512, generator=g), dim=-1)
    ):
        seg.text_cache.memory[name] = emb.numpy()
    image = seg.prepare(str(ROOT / "assets" / "cat.jpg"), short_side=short_side)
    row = {"case": case, "names": len(names), "short_side": short_side, "device": str(seg.device)}
    cuda = seg.device.type == "cuda"
    if cuda:
        seg.segment_batch([image], classes, short_side=short_side)  # warm: kernels, caches
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with TensorMemory() as mem:
        seg.segment_batch([image], classes, short_side=short_side)
    if cuda:
        torch.cuda.synchronize()
        row["cuda_peak_gb_above_weights"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    row["seconds"] = time.perf_counter() - t0  # with the watcher's overhead
    row["tensor_peak_gb"] = mem.peak_bytes / 2**30
    row["largest"] = [
        f"{dtype}{list(shape)} {size / 2**20:.0f} MB" for size, shape, dtype in mem.largest
    ]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fbseg-mem-") as folder:
        rows = [measure(case, args.device, args.precision, Path(folder)) for case in args.cases]
    print(
        f"{'case':<15} {'names':>5} {'short':>5} {'tensors GB':>10} {'CUDA GB':>8} {'s':>7}  largest"
    )
    for r in rows:
        cuda = f"{r['cuda_peak_gb_above_weights']:.2f}" if "cuda_peak_gb_above_weights" in r else ""
        print(
            f"{r['case']:<15} {r['names']:>5} {r['short_side']:>5} {r['tensor_peak_gb']:>10.2f} "
            f"{cuda:>8} {r['seconds']:>7.1f}  {'; '.join(r['largest'][:3])}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
