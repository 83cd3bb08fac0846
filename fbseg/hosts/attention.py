"""Host attention matrices: the only place their math is written.

Shapes: B crops, h heads, L tokens (CLS + N patches), d head width, M proxy tokens.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fbseg.fsa import rows_per_chunk
from fbseg.models.constants import on_device


def self_attention(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax_row(d^-1/2 · x xᵀ + bias) for x (B, h, L, d) → (B, h, L, L)."""
    logits = (x @ x.transpose(-1, -2)) * x.shape[-1] ** -0.5
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, dim=-1)


@functools.lru_cache(maxsize=16)
def _gaussian_cpu(rows: int, cols: int, sigma: float) -> torch.Tensor:
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)
    dist2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    g = torch.exp(-dist2 / (2 * sigma**2))
    return F.pad(g, (1, 0, 1, 0)).float()  # zero row/col for CLS


def neighbourhood_bias(grid: tuple[int, int], sigma: float, like: torch.Tensor) -> torch.Tensor:
    """NACLIP's Gaussian over the (rows, cols) patch grid, padded with 0 for CLS: (L, L)."""
    rows, cols, sigma = grid[0], grid[1], float(sigma)
    return on_device(
        lambda: _gaussian_cpu(rows, cols, sigma), (rows, cols, sigma), like.device, like.dtype
    )


def proxy_attention(feats: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """ProxyCLIP's attention from proxy features (B, C_f, M) → (B, 1, M, M), shared by heads.

    Cosine similarity S of L2-normalised features, one mean μ per crop, γ(S − βμ), entries
    below 0 masked, row softmax. The diagonal is always kept so no row is all −inf.
    S is made once in fp32 and turned into the logits in place; the mask and the softmax go
    ``rows_per_chunk`` rows at a time into the output, in the features' dtype. Peak memory:
    S and the output, not the five M×M arrays of the plain form (a SAM proxy's M is 4096).
    """
    f = F.normalize(feats.float(), dim=1)
    B, _, M = f.shape
    S = f.transpose(1, 2) @ f  # (B, M, M)
    mu = S.mean(dim=(1, 2), keepdim=True)
    logits = S.sub_(beta * mu).mul_(gamma)  # γ(S − βμ), in S's memory
    out = torch.empty((B, M, M), dtype=feats.dtype, device=feats.device)
    chunk = rows_per_chunk(B, M, feats.device)
    for start in range(0, M, chunk):
        rows = logits[:, start : start + chunk]
        drop = rows < 0
        drop.diagonal(offset=start, dim1=1, dim2=2).fill_(False)
        out[:, start : start + chunk] = torch.softmax(rows.masked_fill_(drop, float("-inf")), -1)
    return out.unsqueeze(1)
