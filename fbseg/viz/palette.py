"""Class colours: a fixed, distinguishable set first, then seeded random ones."""

from __future__ import annotations

import numpy as np

_BASE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
]


def palette(k: int) -> np.ndarray:
    """(k, 3) uint8 colours; stable for a given index."""
    colours = list(_BASE[:k])
    rng = np.random.default_rng(12345)
    while len(colours) < k:
        colours.append(tuple(int(c) for c in rng.integers(40, 256, 3)))
    return np.asarray(colours, dtype=np.uint8).reshape(k, 3)
