"""Colours, indexed masks, overlays with a legend."""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# 20 well-separated colours (first the usual tab20-like set), then a deterministic hash.
_BASE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]


def palette(k: int) -> np.ndarray:
    """(k, 3) uint8 colours; stable for a given index."""
    colours = list(_BASE[:k])
    rng = np.random.default_rng(12345)
    while len(colours) < k:
        colours.append(tuple(int(c) for c in rng.integers(40, 256, 3)))
    return np.asarray(colours, dtype=np.uint8).reshape(k, 3)


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


def blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, opacity: float) -> np.ndarray:
    """(1 − a)·image + a·colour per pixel, rounded to uint8. image (H, W, 3) uint8."""
    colour = colours[labels].astype(np.float32)
    out = (1.0 - opacity) * image.astype(np.float32) + opacity * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # old Pillow
        return ImageFont.load_default()


def legend_panel(labels: Sequence[str], colours: np.ndarray, fractions: Sequence[float],
                 height: int) -> Image.Image:
    """A side panel with a swatch, the class and its area per row."""
    size = max(11, min(18, height // max(len(labels), 1) // 2))
    font = _font(size)
    row = size + 8
    width = max(140, 40 + max(int(font.getlength(f"{l}  100.0%")) for l in labels) + 10)
    panel = Image.new("RGB", (width, max(height, row * len(labels) + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, (label, colour, frac) in enumerate(zip(labels, colours, fractions)):
        y = 6 + i * row
        draw.rectangle([8, y, 8 + size, y + size], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
        draw.text((16 + size, y), f"{label}  {100 * frac:.1f}%", fill=(0, 0, 0), font=font)
    return panel


def overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, opacity: float,
            legend: Sequence[str] | None = None, fractions: Sequence[float] | None = None) -> Image.Image:
    """The blended image, with a legend panel on the right when class labels are given."""
    blended = Image.fromarray(blend(image, labels, colours, opacity))
    if not legend:
        return blended
    panel = legend_panel(legend, colours, fractions or [0.0] * len(legend), blended.height)
    canvas = Image.new("RGB", (blended.width + panel.width, max(blended.height, panel.height)),
                       (255, 255, 255))
    canvas.paste(blended, (0, 0))
    canvas.paste(panel, (blended.width, 0))
    return canvas


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


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
