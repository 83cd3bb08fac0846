"""Colours, indexed masks, overlays with a legend."""

from __future__ import annotations

from fbseg.viz.masks import DIFF_COLOUR, disagreement, png_bytes
from fbseg.viz.overlay import _font, blend, legend_panel, overlay
from fbseg.viz.palette import palette
from fbseg.viz.png import binary_png, indexed_png

__all__ = [
    "palette",
    "indexed_png",
    "binary_png",
    "png_bytes",
    "disagreement",
    "DIFF_COLOUR",
    "blend",
    "legend_panel",
    "overlay",
    "_font",
]
