"""The four hosts that attend on CLIP's own patch grid (hosts.md §1–4)."""
from __future__ import annotations

from ..attention import neighbourhood_bias, self_attention
from .base import Host, LastBlock, cls_attention_split, split_heads


class MaskCLIP(Host):
    """A = I (values only); residual and FFN kept, as the official block."""

    name = "maskclip"
    description = "identity attention (values only), residual + FFN kept"
    keeps_residual = True

    def last_block(self, block, x, grid, proxy_feats=None) -> LastBlock:
        _, _, v = split_heads(block, x)
        return LastBlock(block, None, v[:, :, 1:], None, x[:, 1:], grid)


class SCLIP(Host):
    """A = softmax(s·qqᵀ) + softmax(s·kkᵀ) over CLS + patches; residual and FFN kept."""

    name = "sclip"
    description = "q-q + k-k correlative attention, residual + FFN kept"
    keeps_residual = True

    def last_block(self, block, x, grid, proxy_feats=None) -> LastBlock:
        q, k, v = split_heads(block, x)
        A = self_attention(q) + self_attention(k)
        attn, v_patch, cls_term = cls_attention_split(A, v)
        return LastBlock(block, attn, v_patch, cls_term, x[:, 1:], grid)


class ClearCLIP(Host):
    """A = softmax(s·qqᵀ) over CLS + patches; no residual, no FFN."""

    name = "clearclip"
    description = "q-q attention, no residual, no FFN"

    def last_block(self, block, x, grid, proxy_feats=None) -> LastBlock:
        q, _, v = split_heads(block, x)
        attn, v_patch, cls_term = cls_attention_split(self_attention(q), v)
        return LastBlock(block, attn, v_patch, cls_term, None, grid)


class NACLIP(Host):
    """A = softmax(s·kkᵀ + G_σ) with a Gaussian over the patch grid; no residual, no FFN."""

    name = "naclip"
    description = "k-k attention + Gaussian neighbourhood (σ=5), no residual, no FFN"
    sigma = 5.0

    def last_block(self, block, x, grid, proxy_feats=None) -> LastBlock:
        _, k, v = split_heads(block, x)
        A = self_attention(k, neighbourhood_bias(grid, self.sigma, k))
        attn, v_patch, cls_term = cls_attention_split(A, v)
        return LastBlock(block, attn, v_patch, cls_term, None, grid)


