"""SAM's global attention taken a band of query rows at a time.

timm's SAM ViT adds a decomposed relative-position bias to the attention of its global
blocks. For SAM's 1024² input that bias is heads × 4096 × 4096 (384 MB in fp16 for ViT-B),
and PyTorch's fused attention takes it whole, with scratch of its own beside it. Each query's
output depends on its own row of the bias alone, so the same attention over bands of query
rows gives the same result while only one band's bias exists at a time.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

# Query rows of the 64 × 64 grid per band: 8 rows = 512 queries, a 12 × 512 × 4096 bias band.
GRID_ROWS_PER_BAND = 8


def chunk_global_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Make every global (unwindowed, relative-position) attention of a timm SAM ViT run in
    bands of query rows; the weights and their names are unchanged. Returns ``model``."""
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        if getattr(block, "window_size", None) == 0 and getattr(attn, "use_rel_pos", False):
            attn.forward = types.MethodType(_banded_forward, attn)
    return model


def _banded_forward(self, x: torch.Tensor) -> torch.Tensor:
    """timm's ``Attention.forward`` (eval, relative positions) for x (B, H, W, D), the bias
    made and used one band of ``GRID_ROWS_PER_BAND`` query rows at a time."""
    from timm.models.vision_transformer_sam import get_rel_pos

    B, H, W, _ = x.shape
    N = H * W
    qkv = self.qkv(x.reshape(B, N, -1)).view(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, B * self.num_heads, N, -1).unbind(0)  # (B·heads, N, d)
    q, k = self.q_norm(q), self.k_norm(k)
    r_q = q.reshape(-1, H, W, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(H, H, self.rel_pos_h))  # (·, H, W, H)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(W, W, self.rel_pos_w))  # (·, H, W, W)
    out = torch.empty_like(q)
    for top in range(0, H, GRID_ROWS_PER_BAND):
        bottom = min(H, top + GRID_ROWS_PER_BAND)
        bias = rel_h[:, top:bottom, :, :, None] + rel_w[:, top:bottom, :, None, :]
        rows = slice(top * W, bottom * W)
        out[:, rows] = F.scaled_dot_product_attention(
            q[:, rows], k, v, attn_mask=bias.reshape(-1, (bottom - top) * W, N)
        )
    x = out.view(B, self.num_heads, N, -1).transpose(1, 2).reshape(B, N, -1)
    return self.proj(x).view(B, H, W, -1)
