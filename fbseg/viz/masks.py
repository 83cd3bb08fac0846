"""Masks as PNG bytes: indexed (pixel = class, palette embedded), 1-bit, and the image
with changed pixels marked."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fbseg.viz.png import rgb_png


def indexed_png(labels: np.ndarray, colours: np.ndarray) -> bytes:
    """Lossless mode-"P" PNG: pixel value = class index, the palette embedded (≤ 256 classes)."""
    if labels.max(initial=0) > 255 or len(colours) > 256:
        raise ValueError("an indexed PNG holds at most 256 classes")
    img = Image.fromarray(labels.astype(np.uint8), "P")
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(colours)] = colours
    img.putpalette(pal.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


DIFF_COLOUR = (255, 0, 255)


def disagreement(image: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The image dimmed to grey, with the pixels whose label changed in magenta: (H, W, 3)."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True)
    out = np.repeat(0.35 * grey + 100, 3, axis=2)
    out[before != after] = DIFF_COLOUR
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def binary_png(mask: np.ndarray) -> bytes:
    """A 1-bit PNG of a boolean (H, W) mask: white where true."""
    return png_bytes(Image.fromarray(np.asarray(mask, dtype=bool)).convert("1"))


# zlib level for pictures meant for viewing (overlays, diffs) that are not RGB; masks keep
# Pillow's default.
FAST_PNG_LEVEL = 1


def png_bytes(img: Image.Image, fast: bool = False) -> bytes:
    """PNG bytes of ``img``; ``fast`` trades a little size for encoding speed (an RGB
    picture goes through ``rgb_png``)."""
    if fast and img.mode == "RGB":
        return rgb_png(np.asarray(img))
    buf = io.BytesIO()
    if fast:
        img.save(buf, format="PNG", compress_level=FAST_PNG_LEVEL)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()
