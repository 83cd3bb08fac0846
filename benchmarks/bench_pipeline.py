"""End to end: fbseg vs a reference-form pipeline, one image and a folder of images.

Reference form = what the reference code does around the same networks: windows run one at
a time, FSA with the N×N×C KL and per-head dense A' products (reference_form.py), and the
class-name text encoded again on every run. fbseg = batched windows, product-form KL, the
ensemble applied to v, text from the disk cache, a reader/model/writer pipeline for folders.

Every configuration runs in its own subprocess (peak RSS of that process). Without
--checkpoint/--proxy-checkpoint, randomly initialised ViT-B-16 and DINO ViT-B/8 weights are
written to a temporary folder: the timings are real, the masks meaningless.

    python benchmarks/bench_pipeline.py [--sections e2e folder] [--folder-images 50] [--json out.json]
    python benchmarks/bench_pipeline.py --sections e2e --precision bf16   # a CPU with AMX
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parent
CONFIGS = {  # name: (host, feedback, reference form)
    "host only": (None, False, False),
    "fbseg + FSA": (None, True, False),
    "reference form + FSA": (None, True, True),
}


def _voc21_classes():
    from fbseg.eval.datasets import DATASETS

    return DATASETS.get("voc21").classes()


def _segmenter(args, host: str, feedback: bool, reference: bool, cache: Path | None):
    from fbseg.pipeline.segmenter import Segmenter

    if reference:
        import reference_form

        reference_form.install()
    if cache is not None:
        os.environ["FBSEG_CACHE"] = str(cache)
    seg = Segmenter.from_pretrained(
        "ViT-B-16",
        pretrained="openai",
        checkpoint=args.checkpoint,
        host=host,
        proxy="dino",
        proxy_checkpoint=args.proxy_checkpoint,
        feedback=feedback,
        device=args.device,
        precision=args.precision,
        text_cache=cache is not None,
    )
    if reference:
        seg.windows_per_forward = 1  # windows one by one
    return seg


def run_one(args) -> dict:
    """One configuration on one image, in this process."""
    import torch

    host, feedback, reference = args.host, args.feedback, args.reference
    cache = None if reference else Path(args.cache)
    seg = _segmenter(args, host, feedback, reference, cache)
    classes = _voc21_classes()
    out: dict = {"host": host, "feedback": feedback, "reference_form": reference}
    t0 = time.perf_counter()
    seg.encode_text(classes)
    out["text_s"] = time.perf_counter() - t0
    out["text_cache_hit"] = bool(seg.text_cache.hits) and not seg.text_cache.misses
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = seg.segment(args.image, classes)
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out["segment_s"] = min(times)
    out["peak_mb_above_model"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(args.labels_out, result.labels)
    return out


def run_folder(args) -> dict:
    """A folder of images through fbseg's pipeline, or through a plain sequential loop."""
    from fbseg.io import read_image
    from fbseg.runs.folder import segment_folder
    from fbseg.runs.inputs import collect_inputs
    from fbseg.runs.outputs import OutputOptions, output_paths, render_outputs, write_outputs

    reference = args.reference
    seg = _segmenter(args, args.host, True, reference, None if reference else Path(args.cache))
    classes = _voc21_classes()
    seg.encode_text(classes)  # both forms encode once per run; the folder time is the images'
    scan = collect_inputs([args.folder])
    opts = OutputOptions(out_dir=Path(args.out), overlay=True, class_labels=classes.labels)
    t0 = time.perf_counter()
    if reference:
        for item in scan.items:
            rgb = read_image(item.path)
            result = seg.segment(rgb, classes)
            write_outputs(render_outputs(result, rgb, item, opts), output_paths(item, opts), False)
        done = len(scan.items)
    else:
        run = segment_folder(seg, scan, classes, opts, images_per_group=args.group)
        done = run.done_here
    seconds = time.perf_counter() - t0
    return {
        "images": done,
        "seconds": seconds,
        "images_per_s": done / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child(mode: str, args, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--checkpoint",
        args.checkpoint,
        "--proxy-checkpoint",
        args.proxy_checkpoint,
        "--device",
        args.device,
        "--precision",
        args.precision,
        *extra,
    ]
    p = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE)}
    )
    if p.returncode != 0:
        raise SystemExit(f"child failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def make_folder(folder: Path, n: int, seed: int = 0) -> None:
    """n photos cut from the example images at random scales and crops (300–600 px)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [
        Image.open(ROOT / "assets" / name).convert("RGB") for name in ("cat.jpg", "coffee.jpg")
    ]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = sources[i % 2]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        side = int(rng.integers(300, 601))
        crop = src.crop((x, y, x + cw, y + ch))
        scale = side / max(cw, ch)
        crop.resize((max(32, int(cw * scale)), max(32, int(ch * scale)))).save(
            folder / f"img{i:03d}.jpg", quality=90
        )


def random_weights(
    folder: Path, proxy_timm: str = "vit_base_patch8_224.dino", proxy_seed: int | None = None
) -> tuple[str, str]:
    """Random ViT-B-16 and proxy weights saved as state dicts (timing only): seed 0, the proxy
    drawn after the CLIP model or from ``proxy_seed``. Returns their paths."""
    import open_clip
    import timm
    import torch

    torch.manual_seed(0)
    clip_path, proxy_path = folder / "vit_b16_random.pt", folder / f"{proxy_timm}_random.pt"
    torch.save(open_clip.create_model("ViT-B-16").state_dict(), clip_path)
    if proxy_seed is not None:
        torch.manual_seed(proxy_seed)
    torch.save(timm.create_model(proxy_timm, pretrained=False).state_dict(), proxy_path)
    return str(clip_path), str(proxy_path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", nargs="+", default=["e2e", "folder"], choices=["e2e", "folder"])
    ap.add_argument("--hosts", nargs="+", default=["naclip", "proxyclip"])
    ap.add_argument("--folder-hosts", nargs="+", default=["naclip"])
    ap.add_argument("--folder-images", type=int, default=50)
    ap.add_argument("--image", default=str(ROOT / "assets" / "cat.jpg"))
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--proxy-checkpoint", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="of the backbones (bf16: AMX CPUs)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--group", type=int, default=1)
    ap.add_argument("--json", default=None)
    # child-process arguments
    ap.add_argument("--child", choices=["one", "folder"])
    ap.add_argument("--host")
    ap.add_argument("--feedback", action="store_true")
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--cache")
    ap.add_argument("--labels-out")
    ap.add_argument("--folder")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child == "one":
        print(json.dumps(run_one(args)))
        return
    if args.child == "folder":
        print(json.dumps(run_folder(args)))
        return

    with tempfile.TemporaryDirectory(prefix="fbseg-bench-") as work:
        compare(args, Path(work))


def compare(args: argparse.Namespace, work: Path) -> None:
    """Both sections' tables; weights, caches and outputs live under ``work``."""
    random = args.checkpoint is None
    if random:
        args.checkpoint, args.proxy_checkpoint = random_weights(work)
    print(
        f"device {args.device}, precision {args.precision}; {'RANDOM weights (timing only)' if random else 'weights ' + args.checkpoint}; "
        f"classes: VOC21's 21 classes / 46 names; image {Path(args.image).name}"
    )
    report: dict = {"device": args.device, "precision": args.precision, "random_weights": random}
    cache = work / "cache"
    if "e2e" in args.sections:
        rows = []
        print(
            f"\n{'host':<10} {'configuration':<22} {'text s':>8} {'cache':>6} {'segment s':>10} "
            f"{'peak RSS MB':>12} {'vs host':>8} {'labels = fbseg':>14}"
        )
        for host in args.hosts:
            first = True
            labels = {}
            for name, (_, feedback, reference) in CONFIGS.items():
                extra = (
                    [
                        "--host",
                        host,
                        "--cache",
                        str(cache),
                        "--labels-out",
                        str(work / f"{host}-{len(labels)}.npy"),
                        "--repeats",
                        str(args.repeats),
                    ]
                    + (["--feedback"] if feedback else [])
                    + (["--reference"] if reference else [])
                )
                r = _child("one", args, extra)
                labels[name] = np.load(work / f"{host}-{len(labels)}.npy")
                r["configuration"] = name
                rows.append(r)
                base = next(
                    x for x in rows if x["host"] == host and x["configuration"] == "host only"
                )
                same = None
                if reference:  # the same output as fbseg's FSA path?
                    same = float((labels[name] == labels["fbseg + FSA"]).mean())
                    r["label_agreement_with_fbseg"] = same
                print(
                    f"{host if first else '':<10} {name:<22} {r['text_s']:>8.2f} "
                    f"{'hit' if r['text_cache_hit'] else 'miss':>6} {r['segment_s']:>10.2f} "
                    f"{r['peak_rss_mb']:>12.0f} {r['segment_s'] / base['segment_s']:>7.2f}x "
                    + (f"{100 * same:>13.2f}%" if same is not None else f"{'':>14}")
                )
                first = False
            fb = next(x for x in rows if x["host"] == host and x["configuration"] == "fbseg + FSA")
            ref = next(
                x
                for x in rows
                if x["host"] == host and x["configuration"] == "reference form + FSA"
            )
            print(
                f"{'':<10} FSA overhead {100 * (fb['segment_s'] / base['segment_s'] - 1):+.1f}% (fbseg) vs "
                f"{100 * (ref['segment_s'] / base['segment_s'] - 1):+.1f}% (reference form); one-image run "
                f"incl. text: fbseg {fb['text_s'] + fb['segment_s']:.2f} s, reference form "
                f"{ref['text_s'] + ref['segment_s']:.2f} s"
            )
        report["e2e"] = rows
    if "folder" in args.sections:
        folder = work / "folder"
        make_folder(folder, args.folder_images)
        rows = []
        print(
            f"\nfolder of {args.folder_images} images (300–600 px, cut from assets/), FSA on, VOC21 names"
        )
        print(f"{'host':<10} {'pipeline':<34} {'seconds':>8} {'images/s':>9} {'peak RSS MB':>12}")
        for host in args.folder_hosts:
            for reference in (True, False):
                name = (
                    "reference form, sequential"
                    if reference
                    else f"fbseg (reader/model/writer, group {args.group})"
                )
                extra = [
                    "--host",
                    host,
                    "--folder",
                    str(folder),
                    "--out",
                    str(work / f"out-{host}-{reference}"),
                    "--cache",
                    str(cache),
                    "--group",
                    str(args.group),
                ] + (["--reference"] if reference else [])
                r = _child("folder", args, extra)
                r.update(host=host, pipeline=name)
                rows.append(r)
                print(
                    f"{host:<10} {name:<34} {r['seconds']:>8.1f} {r['images_per_s']:>9.3f} {r['peak_rss_mb']:>12.0f}"
                )
        report["folder"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
