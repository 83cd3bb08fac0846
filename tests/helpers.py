"""Helpers shared by several test modules (data makers and fixed settings); not tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fbseg.eval.datasets import DATASETS, IGNORE_INDEX
from fbseg.models.clip import CLIP_MEAN, CLIP_STD

from conftest import ASSETS, TINY, random_image, random_text

FAST = [
    "--model",
    TINY,
    "--host",
    "naclip",
    "--short-side",
    "64",
    "--window",
    "64",
    "--stride",
    "32",
]


class EndsTheProcessThatReadsIt:
    """Unpickled in a worker process (a reader or a writer), it ends that process: a crash
    mid-read or mid-write."""

    def __reduce__(self):
        import os

        return (os._exit, (3,))


def bad_folder(root: Path) -> dict:
    root.mkdir()
    good = {}
    Image.fromarray(random_image(60, 80)).save(root / "good.png")
    good["good"] = (60, 80)
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    data = (ASSETS / "coffee.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.fromarray(random_image(40, 50)).convert("CMYK").save(root / "cmyk.jpg")
    good["cmyk"] = (40, 50)
    Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)).save(
        root / "deep16.png"
    )
    good["deep16"] = (30, 40)
    pal = Image.fromarray(random_image(30, 30)).convert("P")
    pal.save(root / "palette.png", transparency=0)
    good["palette"] = (30, 30)
    rot = Image.fromarray(random_image(20, 60))
    exif = rot.getexif()
    exif[0x0112] = 6  # rotate 90°: displayed 60 high, 20 wide
    rot.save(root / "rotated.jpg", exif=exif)
    good["rotated"] = (60, 20)
    (root / "notes.txt").write_text("skip me")
    return good


def make_dataset(name: str, root: Path, n: int = 3, size=(24, 32), seed: int = 0) -> list[str]:
    """Write ``n`` random images and label maps in the dataset's mmseg layout; return ids."""
    spec = DATASETS.get(name)
    lay = spec.layout
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        sample_id = f"city{i % 2}/img{i}" if name == "cityscapes" else f"img{i:03d}"
        ids.append(sample_id)
        img = root / lay.images / f"{sample_id}{lay.img_suffix}"
        lbl = root / lay.labels / f"{sample_id}{lay.label_suffix}"
        img.parent.mkdir(parents=True, exist_ok=True)
        lbl.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_image(*size, seed=seed + i)).save(img)
        top = spec.num_classes + (1 if spec.reduce_zero_label else 0)
        label = rng.integers(0, top, size=size).astype(np.uint8)
        label[0, :3] = IGNORE_INDEX
        Image.fromarray(label).save(lbl)
    if lay.split:
        split = root / lay.split
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("\n".join(ids) + "\n")
    return ids


def normalised(rgb, size):
    img = torch.from_numpy(rgb).permute(2, 0, 1).float()
    if tuple(img.shape[1:]) != size:
        img = (
            torch.nn.functional.interpolate(
                img[None], size=size, mode="bilinear", align_corners=False
            )[0]
            .round()
            .clamp(0, 255)
        )
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(CLIP_STD).view(3, 1, 1) * 255
    return (img - mean) / std


def with_text(seg, classes, dim, seed=5):
    """Give every name a fixed random embedding (the text path is tested on its own)."""
    names = [n.strip() for c in classes for n in c.split(";")]
    for name, emb in zip(names, random_text(len(names), dim, seed)):
        seg.text_cache.memory[name] = emb.numpy()


def tiny_segmenter(clip, names, host="naclip", config=None, **kwargs):
    """A CPU fp32 Segmenter on the tiny CLIP with fixed random embeddings for ``names``
    (``config``: a SegmentConfig, default the library's; ``kwargs`` go to Segmenter)."""
    from fbseg.pipeline.config import DEFAULTS
    from fbseg.pipeline.segmenter import Segmenter

    seg = Segmenter(
        clip,
        model_name=TINY,
        host=host,
        device="cpu",
        precision="fp32",
        config=config or DEFAULTS,
        **kwargs,
    )
    with_text(seg, names, 32)
    return seg
