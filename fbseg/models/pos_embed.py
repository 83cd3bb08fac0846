"""Position tables at grids other than the one they were trained on."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fbseg.models.proxy_specs import PosResize


def resize_pos_table(table: torch.Tensor, grid: tuple[int, int], mode: PosResize) -> torch.Tensor:
    """Resize a square (1, n0·n0, C) patch position table to ``grid`` = (rows, cols).

    mode PLUS01: bicubic with scale factor ((rows+0.1)/n0, (cols+0.1)/n0), no antialias —
    the form of the CLIP hosts' reference code and of DINO; SIZE: bicubic to the target
    size; SIZE_AA: the same with antialias. The table is returned as is when it fits.
    """
    n0 = int(math.sqrt(table.shape[1]))
    rows, cols = grid
    if (n0, n0) == (rows, cols):
        return table
    t = table.reshape(1, n0, n0, -1).permute(0, 3, 1, 2).float()
    if mode == PosResize.PLUS01:
        scale = ((rows + 0.1) / n0, (cols + 0.1) / n0)
        t = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)
    else:
        t = F.interpolate(
            t,
            size=(rows, cols),
            mode="bicubic",
            align_corners=False,
            antialias=(mode == PosResize.SIZE_AA),
        )
    if tuple(t.shape[-2:]) != (rows, cols):
        raise ValueError(f"position table resized to {tuple(t.shape[-2:])}, wanted {grid}")
    return t.to(table.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, -1)


_CACHE_ATTR = "_fbseg_pos_tables"
_CACHE_SIZE = 32


def cached_pos_table(
    owner: torch.nn.Module,
    table: torch.Tensor,
    grid: tuple[int, int],
    build: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """``build()`` — a position table resized to ``grid`` — computed once per grid and kept on
    ``owner`` (every crop of a size shares it; on a GPU the bicubic resize was a third of a
    small batch's time). The key holds ``table``'s storage and version, so weights loaded or
    moved afterwards are resized again."""
    key = (tuple(grid), table.dtype, str(table.device), table.data_ptr(), table._version)
    cache = owner.__dict__.setdefault(_CACHE_ATTR, {})
    if key not in cache:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        with torch.no_grad():
            cache[key] = build()
    return cache[key]
