"""Feedback self-adaptive attention (FSA): pure tensor functions, no model, no I/O.

Shapes: B crops, N patches on the host grid, C class names, h heads, d head width.
Every function works for any floating dtype; the affinity and A_fb are always computed in
fp32 (the reference precision), whatever the dtype of P.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HOST_SCALE = 20.0
UNIFORM_SCALE = 35.0
NUCLEUS_P = 0.45
LOG_EPS = 1e-10


def class_scores(feats: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · cos(feats, text)``: feats (B, N, E), text (C, E) L2-normalised → (B, N, C)."""
    return scale * F.normalize(feats, dim=-1) @ text.T


def feedback_distribution(s_host: torch.Tensor, s_uni: torch.Tensor) -> torch.Tensor:
    """P = softmax over names of (s_host − s_uni); s_uni may broadcast (B, 1, C) → (B, N, C)."""
    return torch.softmax(s_host - s_uni, dim=-1)


# Rows of an (B, N, N) row-wise computation (A_fb, a proxy's attention) done together: as
# many as keep one chunk's fp32 temporaries (about seven arrays of the chunk's size) at about
# this many elements, by device type (others as "cpu"); never fewer than MIN_ROWS. On a CPU
# 2^22 (about 110 MB of temporaries). Beside a GPU each chunk costs some 20 kernel launches,
# and the host launching them is what limits ProxyCLIP there (an H100 waited 0.6 ms per image
# for the GPU, the host worked 8.7): 2^24 takes a forward of eight DINO B/8 windows
# (8 × 1764²) in two chunks instead of six, 416 launches instead of 520 (counted on the meta
# device). It raises the tensor peak of a SAM proxy's image (3 × 4096²) from 0.61 to 0.89 GB
# in fp32 on the CPU; 2^25 would take it to 1.27 GB (benchmarks/bench_memory.py).
CHUNK_ELEMENTS = {"cpu": 2**22, "cuda": 2**24}
MIN_ROWS = 64


def _affinity_rows(
    P_rows: torch.Tensor, log_p: torch.Tensor, entropy_rows: torch.Tensor
) -> torch.Tensor:
    """S for some rows: P_rows (B, R, C), log_p (B, N, C), entropy_rows (B, R, 1) → (B, R, N)."""
    kl = entropy_rows - P_rows @ log_p.transpose(-1, -2)
    return 1.0 / (1.0 + kl.clamp_min(0.0))


def kl_affinity(P: torch.Tensor) -> torch.Tensor:
    """S_ij = 1 / (1 + max(KL(P_i ‖ P_j), 0)) for P (B, N, C) → (B, N, N), in fp32.

    Product form: KL_ij = Σ_c P_ic log P_ic − Σ_c P_ic log P_jc, one matrix product and
    O(N²) memory instead of the reference's N×N×C tensor; same numbers to float rounding.
    """
    P = P.float()
    log_p = torch.log(P + LOG_EPS)
    return _affinity_rows(P, log_p, (P * log_p).sum(dim=-1, keepdim=True))


def nucleus_keep(S: torch.Tensor, p: float = NUCLEUS_P) -> torch.Tensor:
    """Boolean (…, N, N): per row, the entries whose cumulative softmax mass over the
    descending-sorted row is ≤ p, the row's top entry always kept."""
    sorted_s, order = torch.sort(S, dim=-1, descending=True)
    keep_sorted = torch.softmax(sorted_s, dim=-1).cumsum(dim=-1) <= p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


def attention_from_affinity(S: torch.Tensor, lam: float, p: float = NUCLEUS_P) -> torch.Tensor:
    """Nucleus pruning, sharpening S·exp(λS) on kept entries, row softmax: (B, N, N)."""
    keep = nucleus_keep(S, p)
    weights = (S * torch.exp(lam * S)).masked_fill(~keep, float("-inf"))
    return torch.softmax(weights, dim=-1)


def rows_per_chunk(batch: int, n: int, device: torch.device | None = None) -> int:
    """Rows of an (batch, n, n) row-wise computation done at once on ``device`` (default the
    CPU's budget; see ``CHUNK_ELEMENTS``)."""
    kind = device.type if device is not None else "cpu"
    budget = CHUNK_ELEMENTS.get(kind, CHUNK_ELEMENTS["cpu"])
    return min(n, max(MIN_ROWS, budget // max(1, batch * n)))


def feedback_attention(
    P: torch.Tensor,
    lam: float,
    p: float = NUCLEUS_P,
    row_chunk: int | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A_fb (B, N, N) from the class distribution P (B, N, C). Rows sum to 1.

    Computed in fp32 whatever P's dtype: log P of a peaked P (entries below ~6e-8 are 0 in
    fp16) and the product-form KL need it, and S·exp(λS) amplifies any error near the cut.
    A row of A_fb depends on its row of S alone, so rows are computed ``row_chunk`` at a
    time (default ``rows_per_chunk``): peak memory is the output plus one chunk's
    temporaries, not ~8 N×N arrays. Each chunk is stored in ``out_dtype`` (default fp32) as
    it is done, so a half-precision A_fb never exists in fp32 whole.
    """
    P = P.float()
    B, N, _ = P.shape
    row_chunk = row_chunk or rows_per_chunk(B, N, P.device)
    log_p = torch.log(P + LOG_EPS)
    entropy = (P * log_p).sum(dim=-1, keepdim=True)
    out = torch.empty((B, N, N), dtype=out_dtype or P.dtype, device=P.device)
    for start in range(0, N, row_chunk):
        rows = slice(start, start + row_chunk)
        out[:, rows] = attention_from_affinity(
            _affinity_rows(P[:, rows], log_p, entropy[:, rows]), lam, p
        )
    return out


def ensemble_apply(
    A: torch.Tensor | None,
    A_fb: torch.Tensor,
    v: torch.Tensor,
    Av: torch.Tensor | None = None,
) -> torch.Tensor:
    """A'·v with A' = (A_fb·A + A·A_fb + A_fb) / 3, without forming A' (exact).

    A: (B, 1 or h, N, N) host attention, None for the identity (then A' = A_fb);
    A_fb: (B, N, N); v: (B, h, N, d); Av: A·v if already computed. Returns (B, h, N, d).
    When A is shared by the heads (B, 1, N, N), the heads ride along as columns of one
    (N, h·d) matrix and the sum is accumulated in place: three N×N products, no N×N
    temporaries, four (N, h·d) buffers at most.
    """
    B, h, N, d = v.shape
    if A is None:
        return A_fb.unsqueeze(1) @ v
    if A.shape[1] == 1:
        cols = v.transpose(1, 2).reshape(B, N, h * d)
        fb_v = torch.bmm(A_fb, cols)
        Av_cols = (
            torch.bmm(A[:, 0], cols) if Av is None else Av.transpose(1, 2).reshape(B, N, h * d)
        )
        del cols
        out = torch.bmm(A_fb, Av_cols)
        del Av_cols
        out.baddbmm_(A[:, 0], fb_v).add_(fb_v).div_(3.0)
        return out.reshape(B, N, h, d).transpose(1, 2)
    fb = A_fb.unsqueeze(1)
    fb_v = fb @ v
    if Av is None:
        Av = A @ v
    return (fb @ Av + A @ fb_v + fb_v) / 3.0


def ensemble_rows(A: torch.Tensor | None, A_fb: torch.Tensor, rows) -> torch.Tensor:
    """Rows ``rows`` (an index or slice over N) of A' = (A_fb·A + A·A_fb + A_fb) / 3:
    (B, 1 or h, R, N) — for inspection only; inference uses ``ensemble_apply``."""
    fb = A_fb.unsqueeze(1)
    fb_rows = fb[..., rows, :]
    if A is None:
        return fb_rows
    return (fb_rows @ A + A[..., rows, :] @ fb + fb_rows) / 3.0


def ensemble_matrix(A: torch.Tensor | None, A_fb: torch.Tensor) -> torch.Tensor:
    """A' itself (B, 1 or h, N, N) — for inspection only; inference uses ``ensemble_apply``."""
    return ensemble_rows(A, A_fb, slice(None))
