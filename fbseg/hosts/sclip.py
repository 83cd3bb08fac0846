"""SCLIP: correlative self-attention (q-q + k-k); the block's residual and FFN kept."""

from __future__ import annotations

from fbseg.hosts.attention import self_attention
from fbseg.hosts.base import Host, LastBlock, cls_attention_split, split_heads


class SCLIP(Host):
    """A = softmax(s·qqᵀ) + softmax(s·kkᵀ) over CLS + patches; residual and FFN kept."""

    name = "sclip"

    def last_block(self, block, x, grid, crops) -> LastBlock:
        q, k, v = split_heads(block, x)
        A = self_attention(q) + self_attention(k)
        attn, v_patch, cls_term = cls_attention_split(A, v)
        return LastBlock(block, attn, v_patch, cls_term, x[:, 1:], grid)
