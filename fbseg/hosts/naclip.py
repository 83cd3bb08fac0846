"""NACLIP: k-k attention plus a Gaussian over the patch grid; no residual, no FFN."""

from __future__ import annotations

from fbseg.hosts.attention import neighbourhood_bias, self_attention
from fbseg.hosts.base import Host, LastBlock, cls_attention_split, split_heads


class NACLIP(Host):
    """A = softmax(s·kkᵀ + G_σ) with a Gaussian over the patch grid; no residual, no FFN."""

    name = "naclip"
    sigma = 5.0

    def last_block(self, block, x, grid, crops) -> LastBlock:
        _, k, v = split_heads(block, x)
        A = self_attention(k, neighbourhood_bias(grid, self.sigma, k))
        attn, v_patch, cls_term = cls_attention_split(A, v)
        return LastBlock(block, attn, v_patch, cls_term, None, grid)
