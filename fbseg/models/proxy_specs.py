"""The proxy registry (plain data, no torch): each vision foundation model ProxyCLIP can use,
its timm name, its input, how its position table is resized, and its λ. Adding a proxy is
one row here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from fbseg.models.weights import hf_cached
from fbseg.registry import Registry


class ProxyInput(str, Enum):
    """What a proxy sees: the padded crop, the crop resized to the window (MAE), or resized
    to SAM's own 1024×1024 grid."""

    CROP = "crop"
    WINDOW = "window"
    SAM = "sam"


class PosResize(str, Enum):
    """How a position table is resized to a grid.

    PLUS01: bicubic with scale factor (n+0.1)/n0, no antialias (CLIP hosts' reference, DINO);
    SIZE: bicubic to the size (MAE); SIZE_AA: the same with antialias (DINOv2 with registers);
    NATIVE: the model resizes its own (SAM).
    """

    PLUS01 = "plus01"
    SIZE = "size"
    SIZE_AA = "size_aa"
    NATIVE = "native"


@dataclass(frozen=True)
class ProxySpec:
    """A proxy: its timm name, what input it sees and how its position table is resized.

    input:   what it sees (``ProxyInput``); pos: how its position table is resized (``PosResize``).
    lam:     FSA's λ with this proxy (None: the backbone's default).
    """

    name: str
    timm_name: str
    input: ProxyInput
    pos: PosResize
    lam: float | None = None
    family: str = ""


PROXIES: Registry[ProxySpec] = Registry("proxy")
for _spec in (
    ProxySpec("dino", "vit_base_patch8_224.dino", ProxyInput.CROP, PosResize.PLUS01, family="dino"),
    ProxySpec(
        "dino-b16", "vit_base_patch16_224.dino", ProxyInput.CROP, PosResize.PLUS01, family="dino"
    ),
    ProxySpec(
        "dinov2",
        "vit_base_patch14_reg4_dinov2.lvd142m",
        ProxyInput.CROP,
        PosResize.SIZE_AA,
        family="dinov2",
    ),
    ProxySpec(
        "dinov2-l",
        "vit_large_patch14_reg4_dinov2.lvd142m",
        ProxyInput.CROP,
        PosResize.SIZE_AA,
        family="dinov2",
    ),
    ProxySpec("sam", "samvit_base_patch16.sa1b", ProxyInput.SAM, PosResize.NATIVE, family="sam"),
    ProxySpec("sam-l", "samvit_large_patch16.sa1b", ProxyInput.SAM, PosResize.NATIVE, family="sam"),
    ProxySpec("sam-h", "samvit_huge_patch16.sa1b", ProxyInput.SAM, PosResize.NATIVE, family="sam"),
    ProxySpec(
        "mae", "vit_base_patch16_224.mae", ProxyInput.WINDOW, PosResize.SIZE, lam=4.5, family="mae"
    ),
    ProxySpec(
        "mae-l",
        "vit_large_patch16_224.mae",
        ProxyInput.WINDOW,
        PosResize.SIZE,
        lam=4.5,
        family="mae",
    ),
    ProxySpec(
        "mae-h",
        "vit_huge_patch14_224.mae",
        ProxyInput.WINDOW,
        PosResize.SIZE,
        lam=4.5,
        family="mae",
    ),
):
    PROXIES.register(_spec.name, _spec)

DEFAULT_PROXY = "dino"


def is_cached(spec: ProxySpec) -> bool:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    return hf_cached(getattr(cfg, "hf_hub_id", None))
