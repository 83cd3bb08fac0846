"""Proxy vision models for the ProxyCLIP host (timm), and their features exactly as the
reference takes them (docs/hosts.md, ProxyCLIP)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fbseg.models.clip import CLIP_MEAN, CLIP_STD
from fbseg.models.constants import channel_constant
from fbseg.models.pos_embed import cached_pos_table, resize_pos_table
from fbseg.models.proxy_specs import DEFAULT_PROXY, PROXIES, PosResize, ProxyInput, ProxySpec  # noqa: F401
from fbseg.models.weights import fetch_pretrained, load_into, read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


SAM_INPUT = 1024


def load_proxy(spec: ProxySpec, checkpoint: str | Path | None = None) -> torch.nn.Module:
    """``timm.create_model(spec.timm_name)`` with local or pretrained weights, eval, fp32."""
    import timm

    if checkpoint is not None:
        state = read_state_dict(checkpoint, "--proxy-checkpoint")
        model = timm.create_model(spec.timm_name, pretrained=False)
        load_into(model, state, spec.timm_name, "--proxy-checkpoint", checkpoint)
    else:
        model = fetch_pretrained(
            spec.timm_name,
            "--proxy-checkpoint",
            lambda: timm.create_model(spec.timm_name, pretrained=True),
        )
    return model.eval()


def _vit_features(model: torch.nn.Module, x: torch.Tensor, pos_mode: PosResize) -> torch.Tensor:
    """Last-layer, final-norm patch tokens of a timm ViT, prefix tokens dropped: (B, C, H, W)."""
    pe = model.patch_embed
    tokens = pe.proj(x)  # (B, C, rows, cols)
    grid = tuple(tokens.shape[-2:])
    tokens = pe.norm(tokens.flatten(2).transpose(1, 2))
    prefix = model.num_prefix_tokens
    pos = model.pos_embed
    has_prefix_pos = not getattr(model, "no_embed_class", False) and prefix > 0
    table = pos[:, prefix:] if has_prefix_pos else pos
    patch_pos = cached_pos_table(model, pos, grid, lambda: resize_pos_table(table, grid, pos_mode))
    tokens = tokens + patch_pos.to(tokens.dtype)
    extra = []
    if model.cls_token is not None:
        extra.append(model.cls_token.expand(x.shape[0], -1, -1))
    if getattr(model, "reg_token", None) is not None:
        extra.append(model.reg_token.expand(x.shape[0], -1, -1))
    if extra:
        prefix_tokens = torch.cat(extra, dim=1)
        if has_prefix_pos:
            prefix_tokens = prefix_tokens + pos[:, :prefix].to(tokens.dtype)
        tokens = torch.cat([prefix_tokens.to(tokens.dtype), tokens], dim=1)
    tokens = model.norm_pre(tokens)
    tokens = model.blocks(tokens)
    tokens = model.norm(tokens)[:, prefix:]
    return tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid)


def proxy_tokens(model: torch.nn.Module, spec: ProxySpec, height: int, width: int) -> int:
    """Tokens the proxy's blocks hold for one padded crop of ``height``×``width`` (the input
    rule of ``proxy_features``): its grid at the crop's size, or SAM's fixed 1024² grid."""
    patch = model.patch_embed.patch_size
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    if spec.input is ProxyInput.SAM:
        return (SAM_INPUT // ph) * (SAM_INPUT // pw)
    return (height // ph) * (width // pw)


def proxy_input(
    crops: torch.Tensor,
    clip_mean: tuple[float, ...] = CLIP_MEAN,
    clip_std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """Crops normalised with CLIP's statistics (B, 3, H, W) → ImageNet-normalised.

    ``clip_mean``/``clip_std`` are the ones the crops were normalised with: the CLIP weights'
    own (their pretrained tag's), so the proxy sees the same pixels whatever CLIP expects.
    """

    def const(values: tuple[float, ...]) -> torch.Tensor:
        return channel_constant(tuple(values), crops.device, crops.dtype)

    return (crops * const(clip_std) + const(clip_mean) - const(IMAGENET_MEAN)) / const(IMAGENET_STD)


def proxy_features(
    model: torch.nn.Module,
    spec: ProxySpec,
    crops: torch.Tensor,
    window: int,
    clip_mean: tuple[float, ...] = CLIP_MEAN,
    clip_std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """Proxy features (B, C_f, Hf, Wf) for padded crops (B, 3, H, W) in CLIP-normalised space
    (normalised with ``clip_mean``/``clip_std``)."""
    x = proxy_input(crops, clip_mean, clip_std)
    if spec.input is ProxyInput.SAM:
        # 1024² per crop: 64×64 tokens whose global blocks add a heads×4096² position bias,
        # so crops go one at a time (one already fills a GPU) and the peak is one crop's.
        return torch.cat(
            [
                model.forward_features(
                    F.interpolate(
                        x[i : i + 1],
                        size=(SAM_INPUT, SAM_INPUT),
                        mode="bilinear",
                        align_corners=False,
                    )
                )
                for i in range(x.shape[0])
            ]
        )
    if spec.input is ProxyInput.WINDOW:
        x = F.interpolate(x, size=(window, window), mode="bilinear", align_corners=False)
    return _vit_features(model, x, spec.pos)
