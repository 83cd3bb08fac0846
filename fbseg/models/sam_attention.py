"""SAM's relative-position attention, its position lookup kept on the device and its global
blocks taken a band of query rows at a time.

timm's SAM ViT adds a decomposed relative-position bias to the attention of every block. For
SAM's 1024² input the bias of a global block is heads × 4096 × 4096 (384 MB in fp16 for
ViT-B), and PyTorch's fused attention takes it whole, with scratch of its own beside it. Each
query's output depends on its own row of the bias alone, so the same attention over bands of
query rows gives the same result while only one band's bias exists at a time.

timm also builds the lookup's integer index on the CPU at every call of every block: beside a
GPU that is a copy to the device per block and per crop, and a forward that makes one cannot
be recorded as a CUDA graph. Here the index is made once per size, on the device.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F

from fbseg.models.constants import on_device

# Query rows of the 64 × 64 grid per band: 8 rows = 512 queries, a 12 × 512 × 4096 bias band.
GRID_ROWS_PER_BAND = 8


def patch_rel_pos_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Make every relative-position attention of a timm SAM ViT look its positions up on the
    device, the global (unwindowed) ones in bands of ``GRID_ROWS_PER_BAND`` query rows, the
    windowed ones (a 14 × 14 window's bias is small) whole. The weights and their names are
    unchanged. Returns ``model``."""
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        if getattr(attn, "use_rel_pos", False):
            whole = getattr(block, "window_size", 0) > 0
            attn.forward = types.MethodType(functools.partial(_rel_pos_forward, whole=whole), attn)
    return model


def rel_pos_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """SAM's relative-position embeddings for every (query, key) pair along one axis:
    (q_size, k_size, C) from the learned table ``rel_pos`` (L, C), resized linearly to
    2·max(q_size, k_size) − 1 entries if it has another length — timm's ``get_rel_pos``, with
    the index into the table kept on ``rel_pos``'s device."""
    length = 2 * max(q_size, k_size) - 1
    table = rel_pos
    if rel_pos.shape[0] != length:
        table = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear"
        )
        table = table.reshape(-1, length).permute(1, 0)
    index = on_device(
        lambda: _relative_index(q_size, k_size),
        ("sam-rel-pos", q_size, k_size),
        rel_pos.device,
        torch.int64,
    )
    return table[index]


def _relative_index(q_size: int, k_size: int) -> torch.Tensor:
    """(q_size, k_size) int64: for each pair, the row of the resized table (query coordinate −
    key coordinate + k_size − 1, the shorter axis scaled to the longer)."""
    q = torch.arange(q_size, dtype=torch.float32)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, dtype=torch.float32)[None, :] * max(q_size / k_size, 1.0)
    return ((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).long()


def _rel_pos_forward(self, x: torch.Tensor, whole: bool = False) -> torch.Tensor:
    """timm's ``Attention.forward`` (eval, relative positions) for x (B, H, W, D), the bias
    made and used one band of ``GRID_ROWS_PER_BAND`` query rows at a time (all H rows at once
    when ``whole``)."""
    B, H, W, _ = x.shape
    N = H * W
    qkv = self.qkv(x.reshape(B, N, -1)).view(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, B * self.num_heads, N, -1).unbind(0)  # (B·heads, N, d)
    q, k = self.q_norm(q), self.k_norm(k)
    r_q = q.reshape(-1, H, W, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_pos_table(H, H, self.rel_pos_h))  # (·, H, W, H)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_pos_table(W, W, self.rel_pos_w))  # (·, H, W, W)
    band = H if whole else GRID_ROWS_PER_BAND
    out = torch.empty_like(q) if band < H else None
    for top in range(0, H, band):
        bottom = min(H, top + band)
        bias = rel_h[:, top:bottom, :, :, None] + rel_w[:, top:bottom, :, None, :]
        rows = slice(top * W, bottom * W)
        attended = F.scaled_dot_product_attention(
            q[:, rows], k, v, attn_mask=bias.reshape(-1, (bottom - top) * W, N)
        )
        if out is None:  # one band: the whole output
            out = attended
        else:
            out[:, rows] = attended
    x = out.view(B, self.num_heads, N, -1).transpose(1, 2).reshape(B, N, -1)
    return self.proj(x).view(B, H, W, -1)
