"""PAMR, pixel-adaptive mask refinement, as SCLIP's and NACLIP's segmentors apply it: after the
per-name logits are resized to the image, guided by the normalised protocol image resized to
the same size (docs/method.md, "Refinement").

Each pixel's logits become, ``steps`` times over, a weighted mean of its 8 neighbours' at each
dilation (borders replicated); the weights are a softmax over all neighbours of
``−mean_channels(|x − x_n| / (1e-8 + 0.1·σ))``, σ the per-channel standard deviation of the
3×3 dilated neighbourhoods, centre included. Memory: one (C, H, W) accumulator and one
neighbour weight map per offset — never the (C, 8·dilations, H, W) tensor of the reference —
and names are processed in chunks, so it fits where the reference skips it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The 8 neighbours of a 3×3 kernel in row-major order (centre left out), as (dy, dx) steps.
NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
STD_EPS = 1e-8
STD_SCALE = 0.1
CHUNK_BYTES = 256 * 2**20  # names per chunk: at most this many bytes of logits at a time


def _shifted(x: torch.Tensor, d: int) -> list[torch.Tensor]:
    """x (N, H, W) seen from each neighbour at dilation d (borders replicated): 8 × (N, H, W)."""
    H, W = x.shape[-2:]
    padded = F.pad(x[None], [d] * 4, mode="replicate")[0]
    return [
        padded[:, d + dy * d : d + dy * d + H, d + dx * d : d + dx * d + W] for dy, dx in NEIGHBOURS
    ]


def pamr_weights(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Neighbour weights (8·len(dilations), H, W) from the guide image (K, H, W); each pixel's
    weights sum to 1."""
    image = image.float()
    around = [image[:, None]]  # the centre once per dilation, then its 8 neighbours
    diffs = []
    for d in dilations:
        shifted = _shifted(image, d)
        around += [image[:, None]] + [s[:, None] for s in shifted]
        diffs += [(image - s).abs() for s in shifted]
    around = torch.cat(around[1:], dim=1)  # (K, 9·len(dilations), H, W)
    sigma = around.std(dim=1)  # unbiased, as torch.std: (K, H, W)
    affinity = torch.stack([-(diff / (STD_EPS + STD_SCALE * sigma)).mean(dim=0) for diff in diffs])
    return torch.softmax(affinity, dim=0)


def pamr(
    image: torch.Tensor,
    logits: torch.Tensor,
    steps: int,
    dilations: Sequence[int],
    chunk_bytes: int = CHUNK_BYTES,
) -> torch.Tensor:
    """Refined logits (C, H, W) for logits (C, H, W) guided by image (K, H, W), same H, W."""
    if steps <= 0:
        return logits
    weights = pamr_weights(image, dilations)
    per_name = logits.shape[-2] * logits.shape[-1] * 4 * 3  # the chunk, its update, a shift
    chunk = max(1, chunk_bytes // per_name)
    out = torch.empty_like(logits, dtype=torch.float32)
    for start in range(0, logits.shape[0], chunk):
        mask = logits[start : start + chunk].float()
        for _ in range(steps):
            update = torch.zeros_like(mask)
            n = 0
            for d in dilations:
                for shifted in _shifted(mask, d):
                    update.addcmul_(weights[n], shifted)
                    n += 1
            mask = update
        out[start : start + chunk] = mask
    return out.to(logits.dtype)
