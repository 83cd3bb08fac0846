"""One batch of crops through CLIP, the host and FSA: per-patch cosine logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from fbseg import fsa
from fbseg.hosts.base import CropBatch, Host
from fbseg.models.clip import CLIP_MEAN, CLIP_STD
from fbseg.models.clip_tower import project, run_to_last_block


@dataclass
class Capture:
    """Arrays kept for inspection when asked (never on ordinary runs).

    attn (B, 1 or h, N, N) host attention or None (identity); feedback (B, N, N) A_fb;
    P (B, N, C); keep (B, N, N) nucleus mask; grid (rows, cols); baseline logits (B, C, rows, cols).
    """

    attn: torch.Tensor | None = None
    feedback: torch.Tensor | None = None
    P: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    grid: tuple[int, int] = (0, 0)
    baseline: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class CropModel:
    """The networks one segmentation needs: CLIP's image tower and a host (which owns
    anything else it needs, such as ProxyCLIP's proxy)."""

    visual: nn.Module
    host: Host
    input_mean: tuple[float, ...] = CLIP_MEAN  # what the crops were normalised with
    input_std: tuple[float, ...] = CLIP_STD


def _cosine_logits(
    visual: nn.Module, tokens: torch.Tensor, text: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    feats = F.normalize(project(visual, tokens), dim=-1)
    logits = feats @ text.T  # (B, N, C)
    return logits.transpose(1, 2).reshape(tokens.shape[0], text.shape[0], *grid)


@torch.inference_mode()
def crop_logits(
    model: CropModel,
    crops: torch.Tensor,
    text: torch.Tensor,
    *,
    feedback: bool,
    lam: float,
    window: int,
    capture: Capture | None = None,
    also_baseline: bool = False,
) -> torch.Tensor:
    """Cosine logits (B, C, rows, cols) on the host grid for crops (B, 3, H, W).

    crops are CLIP-normalised and padded; text (C, E) is L2-normalised, one row per name.
    With ``feedback`` the host's attention A is replaced by FSA's A' (docs/method.md, steps 1–8);
    ``also_baseline`` appends the host-only logits: (B, 2C, rows, cols), FSA's first.
    """
    x, grid, block = run_to_last_block(model.visual, crops)
    batch = CropBatch(crops, window, model.input_mean, model.input_std)
    last = model.host.last_block(block, x, grid, batch)
    Av = last.mixed_by_host()
    host_tokens = last.host_output(Av)
    if not feedback:
        baseline = _cosine_logits(model.visual, host_tokens, text, last.grid)
        return torch.cat([baseline, baseline], dim=1) if also_baseline else baseline

    # FSA's decision (scores, P, the KL affinity, the cut, the sharpening) runs in fp32
    # whatever the backbone's precision; only A_fb goes back to it for the ensemble.
    text32 = text.float()
    s_host = fsa.class_scores(project(model.visual, host_tokens).float(), text32, fsa.HOST_SCALE)
    s_uni = fsa.class_scores(
        project(model.visual, last.uniform_output()).float(), text32, fsa.UNIFORM_SCALE
    )
    P = fsa.feedback_distribution(s_host, s_uni)
    A_fb = fsa.feedback_attention(P, lam, out_dtype=last.v.dtype)
    tokens = last.finish(fsa.ensemble_apply(last.attn, A_fb, last.v, Av))
    if capture is not None:
        capture.attn, capture.feedback, capture.P = last.attn, A_fb, P
        capture.keep = fsa.nucleus_keep(fsa.kl_affinity(P))
        capture.grid = last.grid
    baseline = None
    if capture is not None or also_baseline:
        baseline = _cosine_logits(model.visual, host_tokens, text, last.grid)
    if capture is not None:
        capture.baseline = baseline
    out = _cosine_logits(model.visual, tokens, text, last.grid)
    return torch.cat([out, baseline], dim=1) if also_baseline else out
