"""CLIP's image tower up to its last block, and the projection after it."""

from __future__ import annotations

import torch
import torch.nn as nn

from fbseg.models.pos_embed import cached_pos_table, resize_pos_table
from fbseg.models.proxy_specs import PosResize


def clip_position_table(visual: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """(1+N, D): CLS position kept, the patch table resized in the "+0.1" form."""
    pos = visual.positional_embedding

    def build() -> torch.Tensor:
        patch = resize_pos_table(pos[1:].unsqueeze(0), grid, PosResize.PLUS01)[0]
        return torch.cat([pos[:1], patch], dim=0)

    return cached_pos_table(visual, pos, grid, build)


def run_to_last_block(visual: nn.Module, images: torch.Tensor):
    """Run every block but the last. images (B, 3, H, W) CLIP-normalised.

    Returns (x, grid, last_block): x (B, 1+N, D) the last block's input, grid (rows, cols).
    """
    x = visual.conv1(images)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + clip_position_table(visual, grid).to(x.dtype)
    x = visual.ln_pre(visual.patch_dropout(x))
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks[:-1]:
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    return x, grid, blocks[-1]


def project(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """ln_post then proj: (B, N, D) → (B, N, E)."""
    return visual.ln_post(tokens) @ visual.proj


def patch_size(visual: nn.Module) -> int:
    p = visual.conv1.kernel_size
    return int(p[0]) if isinstance(p, tuple) else int(p)
