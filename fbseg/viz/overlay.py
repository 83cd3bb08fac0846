"""The image blended with its class colours, with a legend panel."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


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


def legend_panel(
    labels: Sequence[str], colours: np.ndarray, fractions: Sequence[float], height: int
) -> Image.Image:
    """A side panel with a swatch, the class and its area per row."""
    size = max(11, min(18, height // max(len(labels), 1) // 2))
    font = _font(size)
    row = size + 8
    width = max(140, 40 + max(int(font.getlength(f"{label}  100.0%")) for label in labels) + 10)
    panel = Image.new("RGB", (width, max(height, row * len(labels) + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, (label, colour, frac) in enumerate(zip(labels, colours, fractions)):
        y = 6 + i * row
        draw.rectangle(
            [8, y, 8 + size, y + size], fill=tuple(int(c) for c in colour), outline=(0, 0, 0)
        )
        draw.text((16 + size, y), f"{label}  {100 * frac:.1f}%", fill=(0, 0, 0), font=font)
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
