"""The image with changed pixels marked, and PNG bytes of any Pillow image (label maps and
1-bit masks have their own encoders in ``png``)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fbseg.viz.png import rgb_png

DIFF_COLOUR = (255, 0, 255)


# The grey a pixel is dimmed to, by the sum of its three channels (0–765):
# round(0.35 · mean + 100) = floor((7·sum + 6030) / 60), exact in integers.
_DIMMED_GREY = ((7 * np.arange(3 * 255 + 1) + 6030) // 60).astype(np.uint8)


def disagreement(image: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The image dimmed to grey (0.35 × its channels' mean + 100, rounded), with the pixels
    whose label changed in magenta: (H, W, 3) uint8."""
    # the channels added one by one: numpy's sum over the last axis took several times longer
    sums = image[..., 0].astype(np.uint16) + image[..., 1] + image[..., 2]
    grey = np.take(_DIMMED_GREY, sums)
    out = np.repeat(grey[..., None], 3, axis=2)
    out[before != after] = DIFF_COLOUR
    return out


# Pillow's zlib level for pictures meant for viewing that are not RGB; others keep Pillow's
# default.
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
