"""CLIP backbones: the registry of known ones, the network each weights source needs, and the
loader (open_clip ViTs with a class token and plain attention)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from fbseg.errors import ConfigError, UnknownNameError
from fbseg.models.weights import (
    fetch_pretrained,
    hf_cached,
    is_torchscript,
    load_into,
    quiet_root_logger,
    read_state_dict,
)
from fbseg.registry import Registry

log = logging.getLogger("fbseg")

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


# Image-tower options of open_clip's VisionTransformer that change what the last block's
# patch tokens mean; fbseg's surgery (class token, "tok" pooling, plain attention) cannot run
# them faithfully.
_UNFAITHFUL_VISION_FLAGS = {
    "attentional_pool": "an attentional pooler",
    "final_ln_after_pool": "a final norm after pooling",
    "qk_norm": "normalised queries and keys",
    "scaled_cosine_attn": "scaled cosine attention",
    "scale_heads": "scaled heads",
    "scale_attn_inner": "an inner attention norm",
    "scale_attn": "an attention norm",
    "scale_fc": "an MLP norm",
}


@dataclass(frozen=True)
class Network:
    """What decides CLIP's numbers besides the weights: the MLP activation of both towers
    and the statistics the image is normalised with (channel means/stds in [0, 1] units).

    A pretrained tag's ``interpolation``/``resize_mode`` describe classification crops and do
    not apply: the segmentation protocol resizes the short side and slides windows.
    """

    quick_gelu: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    def as_dict(self) -> dict:
        return {
            "activation": "quick_gelu" if self.quick_gelu else "gelu",
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _model_config(model: str) -> dict:
    import open_clip

    return open_clip.get_model_config(model) or {}


def check_model_name(model: str) -> None:
    """Refuse, from the model config alone (nothing is downloaded), a name open_clip does not
    know or an architecture fbseg cannot run faithfully."""
    import open_clip

    known = open_clip.list_models()
    if model not in known:
        import difflib

        close = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see `fbseg models`"
        raise UnknownNameError(f"unknown model {model!r}; {hint}")
    cfg = _model_config(model)
    vision = cfg.get("vision_cfg", {})
    why = None
    if "timm_model_name" in vision:
        why = f"a timm image tower ({vision['timm_model_name']})"
    elif not isinstance(vision.get("layers"), int):
        why = "a ResNet image tower"
    elif "multimodal_cfg" in cfg:
        why = "a captioning (CoCa) model"
    elif vision.get("pool_type", "tok") != "tok":
        why = f"{vision['pool_type']!r} pooling instead of a class token"
    elif vision.get("pos_embed_type", "learnable") != "learnable":
        why = "fixed position embeddings"
    elif vision.get("block_type") not in (None, "default"):
        why = f"{vision['block_type']!r} blocks"
    else:
        why = next(
            (what for flag, what in _UNFAITHFUL_VISION_FLAGS.items() if vision.get(flag)), None
        )
    if why is not None:
        raise ConfigError(
            f"model {model!r} has {why}; fbseg runs CLIP ViTs with a class token "
            "and plain attention (see `fbseg models`)"
        )


def config_patch_size(model: str) -> int:
    """The patch size of ``model``'s image tower as open_clip's config declares it (a name
    ``check_model_name`` accepts), known before anything is built or downloaded."""
    patch = _model_config(model)["vision_cfg"]["patch_size"]
    return int(patch[0]) if isinstance(patch, (list, tuple)) else int(patch)


def tag_network(model: str, tag: str) -> Network:
    """The network ``tag`` was trained as, from open_clip's pretrained table: its quick_gelu
    entry (absent: the model config's own) and its mean/std."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    if tag not in open_clip.list_pretrained_tags_by_model(model):
        raise ConfigError(f"unknown pretrained tag {tag!r} for {model}")
    cfg = oc_pretrained.get_pretrained_cfg(model, tag)
    quick = cfg.get("quick_gelu", _model_config(model).get("quick_gelu", False))
    return Network(
        bool(quick),
        tuple(cfg.get("mean", CLIP_MEAN)),
        tuple(cfg.get("std", CLIP_STD)),
        f"tag {tag}",
    )


def file_network(model: str) -> Network:
    """A plain weights file with no tag: the model name's own architecture, CLIP statistics."""
    return Network(bool(_model_config(model).get("quick_gelu", False)), CLIP_MEAN, CLIP_STD, "file")


OPENAI_TORCHSCRIPT = Network(True, CLIP_MEAN, CLIP_STD, "OpenAI TorchScript file")


def activation_of(clip) -> bool | None:
    """True if every MLP of both towers is QuickGELU, False if none is, None if mixed."""
    from open_clip.transformer import QuickGELU

    text = getattr(clip, "transformer", None) or getattr(
        getattr(clip, "text", None), "transformer", None
    )
    towers = [clip.visual.transformer] + ([text] if hasattr(text, "resblocks") else [])
    kinds = {isinstance(block.mlp.gelu, QuickGELU) for t in towers for block in t.resblocks}
    return kinds.pop() if len(kinds) == 1 else None


def network_of(clip) -> Network:
    """The network a built model actually is: its activation and its preprocessing config."""
    from open_clip.model import get_model_preprocess_cfg

    pre = get_model_preprocess_cfg(clip) or {}
    quick = activation_of(clip)
    if quick is None:
        raise ConfigError("the CLIP model mixes GELU and QuickGELU blocks")
    return Network(
        quick,
        tuple(pre.get("mean", CLIP_MEAN)),
        tuple(pre.get("std", CLIP_STD)),
        "built model",
    )


def _build(model: str, network: Network, tag: str | None = None):
    """``open_clip.create_model`` forced to ``network`` (activation and mean/std), with
    open_clip's warnings caught: a QuickGELU mismatch is checked against the built model, any
    other warning is passed on as a note."""
    import open_clip

    config_quick = bool(_model_config(model).get("quick_gelu", False))
    overrides = {} if network.quick_gelu or not config_quick else {"quick_gelu": False}
    with warnings.catch_warnings(record=True) as caught, quiet_root_logger():
        warnings.simplefilter("always")
        clip = open_clip.create_model(
            model,
            pretrained=tag,
            force_quick_gelu=network.quick_gelu,
            force_preprocess_cfg={"mean": network.mean, "std": network.std},
            **overrides,
        )
    if activation_of(clip) is not network.quick_gelu:
        raise ConfigError(
            f"{model}: open_clip built {'GELU' if network.quick_gelu else 'QuickGELU'}"
            f" where {network.source} needs the other activation"
        )
    for w in caught:
        if "QuickGELU mismatch" not in str(w.message):
            log.warning("open_clip: %s", w.message)
    return clip


def load_clip(model: str, pretrained: str | None, checkpoint: str | Path | None):
    """``open_clip.create_model(model)`` built as the weights need, with weights from a local
    file or a pretrained tag.

    The tag's table entry decides the activation and the input statistics. A plain file keeps
    the model name's architecture unless ``pretrained`` says it is a local copy of that tag;
    OpenAI's TorchScript ``.pt`` files are QuickGELU. Returns the model in eval mode, fp32,
    on the CPU.
    """
    from open_clip.factory import convert_state_dict

    check_model_name(model)
    if checkpoint is not None:
        if is_torchscript(checkpoint):
            network = OPENAI_TORCHSCRIPT
            if pretrained is not None and not tag_network(model, pretrained).quick_gelu:
                raise ConfigError(
                    f"{checkpoint} is an OpenAI TorchScript file (QuickGELU); "
                    f"tag {pretrained!r} is not"
                )
        else:
            network = tag_network(model, pretrained) if pretrained else file_network(model)
        state = read_state_dict(checkpoint, "--checkpoint")
        clip = _build(model, network)
        state = convert_state_dict(clip, state)
        # A scripted archive also stores buffers the model does not persist (attn_mask).
        transient = set(dict(clip.named_buffers())) - set(clip.state_dict())
        state = {k: v for k, v in state.items() if k not in transient}
        load_into(clip, state, model, "--checkpoint", checkpoint)
    else:
        tag = pretrained or default_pretrained(model)
        if tag is None:
            raise ConfigError(f"no default weights for {model}: give --pretrained or --checkpoint")
        network = tag_network(model, tag)
        clip = fetch_pretrained(
            f"{model}/{tag}", "--checkpoint", lambda: _build(model, network, tag)
        )
    if not hasattr(clip, "visual") or not hasattr(clip.visual, "transformer"):
        raise ConfigError(f"model {model!r} has no CLIP ViT image tower")
    return clip.eval()


def is_cached(model: str, tag: str) -> bool:
    from open_clip import pretrained as oc_pretrained

    cfg = oc_pretrained.get_pretrained_cfg(model, tag) or {}
    return hf_cached(cfg.get("hf_hub"))
