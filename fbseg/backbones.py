"""CLIP backbones: the registry of known ones and the loader (any open_clip ViT name works)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, UnknownNameError
from .registry import Registry
from .weights import fetch_pretrained, hf_cached, load_into, quiet_root_logger, read_state_dict

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BackboneSpec:
    """A CLIP architecture fbseg is tested with, its default weights and FSA's λ."""

    name: str
    pretrained: str
    lam: float
    notes: str = ""


BACKBONES: Registry[BackboneSpec] = Registry("backbone")
for _spec in (
    BackboneSpec("ViT-B-16", "openai", 3.0, "the reference default"),
    BackboneSpec("ViT-L-14", "openai", 3.0),
    BackboneSpec("ViT-H-14", "laion2b_s32b_b79k", 2.3),
):
    BACKBONES.register(_spec.name, _spec)

DEFAULT_BACKBONE = "ViT-B-16"


def default_pretrained(model: str) -> str | None:
    return BACKBONES.get(model).pretrained if model in BACKBONES else None


def default_lam(model: str) -> float:
    """FSA's λ for the non-MAE proxies and the CLIP-grid hosts: 2.3 on ViT-H-14, else 3.0."""
    return BACKBONES.get(model).lam if model in BACKBONES else (2.3 if "-H-" in model else 3.0)


def check_model_name(model: str) -> None:
    import open_clip

    known = open_clip.list_models()
    if model not in known:
        import difflib

        close = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see `fbseg models`"
        raise UnknownNameError(f"unknown model {model!r}; {hint}")
    if not model.startswith("ViT") and "vit" not in model.lower():
        raise ConfigError(f"model {model!r} is not a ViT; fbseg needs a CLIP ViT")


def load_clip(model: str, pretrained: str | None, checkpoint: str | Path | None):
    """``open_clip.create_model(model)`` with weights from a local file or a pretrained tag.

    Returns the model in eval mode, fp32, on the CPU.
    """
    import open_clip
    from open_clip.factory import convert_state_dict

    check_model_name(model)
    if checkpoint is not None:
        state = read_state_dict(checkpoint, "--checkpoint")
        with quiet_root_logger():
            clip = open_clip.create_model(model, pretrained=None)
        state = convert_state_dict(clip, state)
        load_into(clip, state, model, "--checkpoint", checkpoint)
    else:
        tag = pretrained or default_pretrained(model)
        if tag is None:
            raise ConfigError(f"no default weights for {model}: give --pretrained or --checkpoint")
        if tag not in open_clip.list_pretrained_tags_by_model(model):
            raise ConfigError(f"unknown pretrained tag {tag!r} for {model}")
        clip = fetch_pretrained(
            f"{model}/{tag}", "--checkpoint",
            lambda: open_clip.create_model(model, pretrained=tag),
        )
    if not hasattr(clip, "visual") or not hasattr(clip.visual, "transformer"):
        raise ConfigError(f"model {model!r} has no CLIP ViT image tower")
    return clip.eval()


def is_cached(model: str, tag: str) -> bool:
    from open_clip import pretrained as oc_pretrained

    cfg = oc_pretrained.get_pretrained_cfg(model, tag) or {}
    return hf_cached(cfg.get("hf_hub"))
