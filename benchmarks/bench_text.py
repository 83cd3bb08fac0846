"""What encoding class names costs when they are not yet cached: each name × the 80 ImageNet
templates through CLIP's text tower, in seconds per name set, with the tower run over
open_clip's whole 77-position context (``clip.encode_text``, as fbseg did before) and over
the positions up to the last end-of-text token (``encode_names``), and the largest
difference between the two sets of embeddings. Random weights of the real architecture
(the cost does not depend on them).

    python benchmarks/bench_text.py [--model ViT-B-16] [--device cpu] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

SETS = {  # name set: its names
    "a photo's 4 names": ["cat", "rug", "carpet", "wall"],
    "VOC21 (46 names)": None,  # the dataset registry's names, background words included
    "4 long names": [
        "a bright red double-decker bus",
        "wooden garden bench with peeling paint",
        "stainless steel kitchen refrigerator",
        "person riding a mountain bike",
    ],
}


def names_of(label: str) -> list[str]:
    if SETS[label] is not None:
        return SETS[label]
    from fbseg.eval.datasets import DATASETS

    return DATASETS.get("voc21").classes().flat_names


@torch.inference_mode()
def whole_context(clip, tokenizer, names: list[str], device, chunk: int = 640) -> torch.Tensor:
    """The embeddings as open_clip's ``encode_text`` gives them over all 77 positions."""
    from fbseg.models.text import imagenet_templates

    templates = imagenet_templates()
    tokens = tokenizer([t(name) for name in names for t in templates])
    out = [
        F.normalize(clip.encode_text(tokens[s : s + chunk].to(device)).float(), dim=-1)
        for s in range(0, len(tokens), chunk)
    ]
    per_prompt = torch.cat(out).reshape(len(names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def timed(fn, names, device, repeats: int) -> tuple[float, torch.Tensor]:
    """Best of ``repeats`` runs of ``fn(names)`` in seconds, and its result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn(names)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()

    import open_clip

    from fbseg.models.text import encode_names

    device = torch.device(args.device)
    torch.manual_seed(0)
    clip = open_clip.create_model(args.model).eval().to(device)
    tokenizer = open_clip.get_tokenizer(args.model)
    print(f"{args.model} text tower, random weights, {device}, {torch.get_num_threads()} threads")
    print("| names | prompts | 77 positions | to the last end-of-text | speed-up | max diff |")
    print("|---|---|---|---|---|---|")
    rows = []
    for label in SETS:
        names = names_of(label)
        full_s, full = timed(
            lambda n: whole_context(clip, tokenizer, n, device), names, device, args.repeats
        )
        cut_s, cut = timed(
            lambda n: encode_names(clip, tokenizer, n, device), names, device, args.repeats
        )
        diff = (full - cut).abs().max().item()
        rows.append(
            {
                "names": label,
                "prompts": len(names) * 80,
                "full_s": full_s,
                "cut_s": cut_s,
                "max_diff": diff,
            }
        )
        print(
            f"| {label} | {len(names) * 80} | {full_s:.2f} s | {cut_s:.2f} s |"
            f" {full_s / cut_s:.1f}× | {diff:.1e} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
