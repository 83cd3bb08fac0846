"""ClearCLIP: q-q attention; no residual, no FFN."""

from __future__ import annotations

from fbseg.hosts.attention import self_attention
from fbseg.hosts.base import Host, LastBlock, cls_attention_split, split_heads


class ClearCLIP(Host):
    """A = softmax(s·qqᵀ) over CLS + patches; no residual, no FFN."""

    name = "clearclip"

    def last_block(self, block, x, grid, crops) -> LastBlock:
        q, _, v = split_heads(block, x)
        attn, v_patch, cls_term = cls_attention_split(self_attention(q), v)
        return LastBlock(block, attn, v_patch, cls_term, None, grid)
