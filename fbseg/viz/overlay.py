"""The image blended with its class colours, with a legend panel."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, opacity: float) -> np.ndarray:
    """(1 − a)·image + a·colour per pixel in float32, rounded to uint8. image (H, W, 3) uint8,
    labels (H, W), colours (K, 3).

    Every output byte depends only on its class, channel and input byte, so the (K, 3, 256)
    table of results is formed once and the image is one lookup into it: about 3× faster
    than the arithmetic per pixel, with the same bytes."""
    keep = (1.0 - opacity) * np.arange(256, dtype=np.float32)  # (256,)
    paint = opacity * np.asarray(colours).astype(np.float32)  # (K, 3)
    table = np.clip(keep[None, None, :] + paint[:, :, None] + 0.5, 0, 255).astype(np.uint8)
    index_type = np.int32 if table.size < 2**31 else np.int64
    index = labels.astype(index_type)[..., None] * index_type(3 * 256) + np.arange(
        0, 3 * 256, 256, dtype=index_type
    )  # (H, W, 3): where each pixel's channel starts in the table
    index += image
    return table.ravel()[index]


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
    blended = Image.fromarray(blend(image, labels, colours, opacity))
    if not legend:
        return blended
    panel = legend_panel(legend, colours, fractions or [0.0] * len(legend), blended.height)
    canvas = Image.new(
        "RGB", (blended.width + panel.width, max(blended.height, panel.height)), (255, 255, 255)
    )
    canvas.paste(blended, (0, 0))
    canvas.paste(panel, (blended.width, 0))
    return canvas
