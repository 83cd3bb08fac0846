"""What every host gives FSA: its attention, the values, and how to finish the last block.

A host turns the input of CLIP's last block into a ``LastBlock``; the prediction for any
mixing of the values (the host's own A·v, the uniform mean, FSA's A'·v) is then finished
by ``LastBlock.finish`` the same way, so the block's tail is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


@dataclass
class LastBlock:
    """The last block of one batch of crops, split for FSA.

    attn:      (B, 1 or h, N, N) patch-to-patch host attention (as is, not renormalised);
               None means the identity (MaskCLIP).
    v:         (B, h, N, d) patch values on the host grid.
    cls_term:  (B, h, N, d) what the CLS token adds to A·v, for hosts that attend to it.
    residual:  (B, N, D) the patch tokens entering the block, for hosts that keep the
               residual and the FFN (MaskCLIP, SCLIP); None for reduced blocks.
    grid:      (rows, cols) of the host grid, N = rows·cols.
    """

    block: nn.Module
    attn: torch.Tensor | None
    v: torch.Tensor
    cls_term: torch.Tensor | None
    residual: torch.Tensor | None
    grid: tuple[int, int]

    def mixed_by_host(self) -> torch.Tensor:
        """A·v (B, h, N, d), without the CLS contribution."""
        return self.v if self.attn is None else self.attn @ self.v

    def finish(self, mixed: torch.Tensor, with_cls: bool = False) -> torch.Tensor:
        """Block output tokens (B, N', D) for mixed values (B, h, N', d), N' = N or 1.

        out_proj of the concatenated heads, then — for residual hosts — x + o and the FFN.
        A mixing with N' = 1 (the uniform attention) broadcasts over the patches.
        """
        if with_cls and self.cls_term is not None:
            mixed = mixed + self.cls_term
        B, h, n, d = mixed.shape
        o = self.block.attn.out_proj(mixed.transpose(1, 2).reshape(B, n, h * d))
        if self.residual is None:
            return o
        u = self.residual + self.block.ls_1(o)
        return u + self.block.ls_2(self.block.mlp(self.block.ln_2(u)))

    def host_output(self, Av: torch.Tensor | None = None) -> torch.Tensor:
        """The host's own last-block output (B, N, D), CLS contribution included."""
        return self.finish(self.mixed_by_host() if Av is None else Av, with_cls=True)

    def uniform_output(self) -> torch.Tensor:
        """Output with every row of A uniform over the N patches: (B, 1, D) or (B, N, D)."""
        mean_v = self.v.mean(dim=2, keepdim=True)
        if self.residual is not None:
            mean_v = mean_v.expand_as(self.v)
        return self.finish(mean_v)


def split_heads(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, h, L, d) of the block's attention on ln_1(x), x (B, L, D)."""
    attn = block.attn
    B, L, D = x.shape
    h = attn.num_heads
    qkv = nn.functional.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.reshape(B, L, 3, h, D // h).permute(2, 0, 3, 1, 4)
    return q, k, v


@dataclass(frozen=True)
class CropBatch:
    """The crops a batch of windows is made of, as a host may need to see them.

    pixels: (B, 3, H, W) padded crops, normalised with ``mean``/``std`` (CLIP's weights' own);
    window: the protocol's window size (MAE proxies resize the crop to it).
    """

    pixels: torch.Tensor
    window: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class HostOptions:
    """What a host factory may need besides CLIP: the proxy for ProxyCLIP."""

    proxy: str | None = None  # None: the proxy registry's default
    proxy_checkpoint: str | Path | None = None


class Host:
    """A training-free last-block attention; it owns whatever it needs besides CLIP.

    Subclasses implement ``last_block``; the registry (``fbseg.hosts.HOSTS``) maps a name to
    the class, whose ``build`` makes an instance from ``HostOptions``.
    """

    name: str = ""  # its name in the registry (fbseg.hosts.HOSTS)
    pad_multiple: int | None = None  # None: the CLIP patch size
    lam: float | None = None  # FSA's λ for this host, None: the backbone's

    @classmethod
    def build(cls, options: HostOptions) -> Host:
        """An instance for ``options`` (weights it needs are loaded here)."""
        return cls()

    def to(self, device: torch.device, dtype: torch.dtype) -> Host:
        """Move the models the host owns (none for the CLIP-grid hosts)."""
        return self

    @property
    def label(self) -> str:
        """How a report names this host: "naclip", "proxyclip (dino)"."""
        return self.name

    def identity(self) -> dict:
        """What besides CLIP decides this host's output (for reports and cache keys)."""
        return {"host": self.name, "proxy": None, "proxy_weights": None}

    def tokens_per_crop(self, height: int, width: int, patch: int) -> int:
        """The most tokens one padded crop puts through a transformer: CLIP's grid here; a
        host with a model of its own counts that one too (sizes window batches)."""
        return (height // patch) * (width // patch)

    def last_block(
        self,
        block: nn.Module,
        x: torch.Tensor,
        grid: tuple[int, int],
        crops: CropBatch,
    ) -> LastBlock:
        """x (B, 1+N, D): the input of CLIP's last block; grid: the CLIP (rows, cols)."""
        raise NotImplementedError


def cls_attention_split(
    A: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From a full attention A (B, h, L, L) over CLS + patches and values v (B, h, L, d):
    the patch-to-patch block, the patch values, and the CLS contribution A[:, :, 1:, :1]·v_cls."""
    return A[:, :, 1:, 1:], v[:, :, 1:], A[:, :, 1:, :1] * v[:, :, :1]
