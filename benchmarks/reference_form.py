"""The FSA step as the reference code computes it (for timing comparisons only).

N×N×C KL tensor, sort-based pruning on the full matrix, A_fb repeated per head, and the
ensemble formed densely per head before it meets v; and the class names' prompts through
CLIP's text tower over its whole 77-position context, as ``encode_text`` runs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def feedback_attention(
    P: torch.Tensor, lam: float, p: float = 0.45, row_chunk=None, out_dtype=None
) -> torch.Tensor:
    """A_fb (B, N, N) from P (B, N, C) through the dense (B, N, N, C) KL, whole (fbseg's
    ``row_chunk`` is ignored); in ``out_dtype`` when given."""
    return _reference_feedback(P, lam, p).to(out_dtype or P.dtype)


def _reference_feedback(P: torch.Tensor, lam: float, p: float) -> torch.Tensor:
    logp = torch.log(P + 1e-10)
    kl = torch.sum(P.unsqueeze(2) * (logp.unsqueeze(2) - logp.unsqueeze(1)), dim=3).clamp(min=0)
    sim = 1 / (kl + 1.0)
    s, idx = torch.sort(sim, descending=True, dim=-1)
    mask = torch.cumsum(F.softmax(s, dim=-1), dim=-1) <= p
    mask[..., 0] = True
    s = s.masked_fill(~mask, float("-inf"))
    pruned = torch.empty_like(s).scatter_(-1, idx, s)
    inf = pruned == float("-inf")
    w = pruned * torch.exp(lam * pruned)
    w[inf] = float("-inf")
    return F.softmax(w, dim=-1)


def ensemble_apply(A, A_fb: torch.Tensor, v: torch.Tensor, Av=None) -> torch.Tensor:
    """(A_fb·A + A·A_fb + A_fb)/3 formed per head as N×N products, then applied to v."""
    B, h, N, d = v.shape
    fb = A_fb.unsqueeze(1).repeat(1, h, 1, 1).flatten(0, 1)
    if A is None:
        return torch.bmm(fb, v.flatten(0, 1)).view(B, h, N, d)
    A_h = A.expand(B, h, N, N).flatten(0, 1)
    ens = (torch.bmm(fb, A_h) + torch.bmm(A_h, fb) + fb) / 3.0
    return torch.bmm(ens, v.flatten(0, 1)).view(B, h, N, d)


def encode_prompts(clip, tokens: torch.Tensor) -> torch.Tensor:
    """Prompts (P, 77) through the text tower over the whole context, padding included."""
    return clip.encode_text(tokens)


_FBSEG_ENCODE_PROMPTS = []


def install() -> None:
    """Make fbseg's crop model use this form of FSA, and its text encoder this form of the
    prompts (for the "reference form" rows)."""
    import fbseg.fsa
    import fbseg.models.text

    fbseg.fsa.feedback_attention = feedback_attention
    fbseg.fsa.ensemble_apply = ensemble_apply
    if not _FBSEG_ENCODE_PROMPTS:
        _FBSEG_ENCODE_PROMPTS.append(fbseg.models.text.encode_prompts)
    fbseg.models.text.encode_prompts = encode_prompts


def restore() -> None:
    """fbseg's own FSA and text encoder again."""
    import importlib

    import fbseg.fsa
    import fbseg.models.text

    importlib.reload(fbseg.fsa)
    if _FBSEG_ENCODE_PROMPTS:
        fbseg.models.text.encode_prompts = _FBSEG_ENCODE_PROMPTS[0]
