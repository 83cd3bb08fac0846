"""The image blended with its class colours, with a legend panel."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def alpha_of(opacity: float) -> int:
    """The 8-bit alpha (0–255) an opacity in [0, 1] is drawn with."""
    return int(round(min(max(opacity, 0.0), 1.0) * 255))


def _blended(
    image: np.ndarray, labels: np.ndarray, colours: np.ndarray, opacity: float
) -> Image.Image:
    """``blend`` as a Pillow image: each pixel's class colour composited over the image with
    one constant alpha, in Pillow's C loop (about 3× faster than a numpy lookup per byte)."""
    colour = np.take(np.asarray(colours, dtype=np.uint8), np.asarray(labels), axis=0)
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))  # a copy
    out.paste(Image.fromarray(colour), (0, 0), Image.new("L", out.size, alpha_of(opacity)))
    return out


def blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, opacity: float) -> np.ndarray:
    """The 8-bit alpha blend of each pixel's class colour over the image: per byte
    round(((255 − m)·image + m·colour) / 255) with m = ``alpha_of(opacity)``. image (H, W, 3)
    uint8, labels (H, W) class indices, colours (K, 3) → (H, W, 3) uint8."""
    return np.asarray(_blended(image, labels, colours, opacity))


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # old Pillow
        return ImageFont.load_default()


@lru_cache(maxsize=2048)
def _text_length(text: str, size: int) -> int:
    """The advance width of ``text`` in pixels (the legend's width fits the longest row)."""
    return int(_font(size).getlength(text))


@lru_cache(maxsize=2048)
def _text_mask(text: str, size: int) -> tuple[Image.Image, int, int]:
    """``text`` rendered once as a coverage mask (mode "L"), and where its corner lies from
    the text's origin (a glyph may reach left of or above it). Rendering is most of a
    legend's cost, and a folder run repeats the same rows (every absent class reads
    "label  0.0%")."""
    font = _font(size)
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    dx, dy = min(left, 0), min(top, 0)
    mask = Image.new("L", (max(1, right - dx), max(1, bottom - dy)), 0)
    ImageDraw.Draw(mask).text((-dx, -dy), text, fill=255, font=font)
    return mask, dx, dy


def _draw_text(panel: Image.Image, xy: tuple[int, int], text: str, size: int) -> None:
    """Black ``text`` at ``xy``, as ``ImageDraw.text`` draws it, from the cached mask."""
    mask, dx, dy = _text_mask(text, size)
    panel.paste((0, 0, 0), (xy[0] + dx, xy[1] + dy), mask)


def legend_panel(
    labels: Sequence[str], colours: np.ndarray, fractions: Sequence[float], height: int
) -> Image.Image:
    """A side panel with a swatch, the class and its area per row."""
    size = max(11, min(18, height // max(len(labels), 1) // 2))
    row = size + 8
    width = max(140, 40 + max(_text_length(f"{label}  100.0%", size) for label in labels) + 10)
    panel = Image.new("RGB", (width, max(height, row * len(labels) + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, (label, colour, frac) in enumerate(zip(labels, colours, fractions)):
        y = 6 + i * row
        draw.rectangle(
            [8, y, 8 + size, y + size], fill=tuple(int(c) for c in colour), outline=(0, 0, 0)
        )
        _draw_text(panel, (16 + size, y), f"{label}  {100 * frac:.1f}%", size)
    return panel


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    colours: np.ndarray,
    opacity: float,
    legend: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
) -> Image.Image:
    """The blended image, with a legend panel on the right when class labels are given."""
    blended = _blended(image, labels, colours, opacity)
    if not legend:
        return blended
    panel = legend_panel(legend, colours, fractions or [0.0] * len(legend), blended.height)
    canvas = Image.new(
        "RGB", (blended.width + panel.width, max(blended.height, panel.height)), (255, 255, 255)
    )
    canvas.paste(blended, (0, 0))
    canvas.paste(panel, (blended.width, 0))
    return canvas
