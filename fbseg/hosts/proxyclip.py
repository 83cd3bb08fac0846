"""ProxyCLIP (hosts.md §5): attention from a vision foundation model's features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fbseg.hosts.attention import proxy_attention
from fbseg.hosts.base import Host, LastBlock, split_heads


class ProxyCLIP(Host):
    """A = softmax(mask(γ(S − βμ))) from proxy features, shared by all heads; CLIP values
    resized bilinearly to the proxy grid; no residual, no FFN, no CLS."""

    name = "proxyclip"
    description = "proxy attention from DINO/DINOv2/SAM/MAE features, no residual, no FFN"
    uses_proxy = True
    pad_multiple = 56
    beta = 1.2
    gamma = 3.0

    def last_block(self, block, x, grid, proxy_feats=None) -> LastBlock:
        if proxy_feats is None:
            raise ValueError("the proxyclip host needs proxy features")
        _, _, v = split_heads(block, x)
        v = v[:, :, 1:]
        B, h, _, d = v.shape
        rows, cols = grid
        proxy_grid = tuple(proxy_feats.shape[-2:])
        v = v.reshape(B * h, rows, cols, d).permute(0, 3, 1, 2)
        v = F.interpolate(v, size=proxy_grid, mode="bilinear", align_corners=False)
        v = v.permute(0, 2, 3, 1).reshape(B, h, proxy_grid[0] * proxy_grid[1], d)
        attn = proxy_attention(proxy_feats.flatten(2), self.beta, self.gamma).to(v.dtype)
        return LastBlock(block, attn, v, None, None, proxy_grid)
