"""ProxyCLIP: attention from a vision foundation model's features (DINO, DINOv2, SAM, MAE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fbseg.hosts.attention import proxy_attention
from fbseg.hosts.base import CropBatch, Host, HostOptions, LastBlock, split_heads
from fbseg.models.proxies import (
    DEFAULT_PROXY,
    PROXIES,
    ProxyInput,
    ProxySpec,
    load_proxy,
    proxy_features,
    proxy_tokens,
)
from fbseg.models.sam_attention import patch_rel_pos_attention
from fbseg.models.weights import weights_id


class ProxyCLIP(Host):
    """A = softmax(mask(γ(S − βμ))) from proxy features, shared by all heads; CLIP values
    resized bilinearly to the proxy grid; no residual, no FFN, no CLS.

    The host owns its proxy: ``ProxyCLIP(model, spec, weights_id)``, or ``build`` from the
    proxy registry and a local file or the hub.
    """

    name = "proxyclip"
    pad_multiple = 56
    beta = 1.2
    gamma = 3.0

    def __init__(self, proxy: torch.nn.Module, spec: ProxySpec, weights_id: str | None = None):
        if spec.input is ProxyInput.SAM:  # its 12 × 4096² position bias, a band at a time
            patch_rel_pos_attention(proxy)
        self.proxy = proxy.eval()
        self.spec = spec
        self.weights_id = weights_id
        self.lam = spec.lam

    @classmethod
    def build(cls, options: HostOptions) -> ProxyCLIP:
        spec = PROXIES.get(options.proxy or DEFAULT_PROXY)
        return cls(
            load_proxy(spec, options.proxy_checkpoint),
            spec,
            weights_id(spec.name, "timm", options.proxy_checkpoint),
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> ProxyCLIP:
        self.proxy = self.proxy.to(device, dtype)
        return self

    @property
    def label(self) -> str:
        return f"{self.name} ({self.spec.name})"

    def identity(self) -> dict:
        return {"host": self.name, "proxy": self.spec.name, "proxy_weights": self.weights_id}

    def tokens_per_crop(self, height: int, width: int, patch: int) -> int:
        return max(
            super().tokens_per_crop(height, width, patch),
            proxy_tokens(self.proxy, self.spec, height, width),
        )

    def features(self, crops: CropBatch) -> torch.Tensor:
        """Proxy features (B, C_f, Hf, Wf) of the crops."""
        dtype = next(self.proxy.parameters()).dtype
        return proxy_features(
            self.proxy, self.spec, crops.pixels.to(dtype), crops.window, crops.mean, crops.std
        )

    def last_block(self, block, x, grid, crops: CropBatch) -> LastBlock:
        proxy_feats = self.features(crops).to(x.dtype)
        _, _, v = split_heads(block, x)
        v = v[:, :, 1:]
        B, h, _, d = v.shape
        rows, cols = grid
        proxy_grid = tuple(proxy_feats.shape[-2:])
        v = v.reshape(B * h, rows, cols, d).permute(0, 3, 1, 2)
        v = F.interpolate(v, size=proxy_grid, mode="bilinear", align_corners=False)
        v = v.permute(0, 2, 3, 1).reshape(B, h, proxy_grid[0] * proxy_grid[1], d)
        attn = proxy_attention(proxy_feats.flatten(2), self.beta, self.gamma).to(v.dtype)
        return LastBlock(block, attn, v, None, None, proxy_grid)
