"""Presets: each method's own protocol, as overrides of ``SegmentConfig``'s defaults.

A preset names its host and, per benchmark, what its official repository's config sets (the
values and where they are quoted from are checked in ``tests/test_presets.py``). ``segment``
and ``explain`` use a preset's COCO-Stuff config (no background class); ``eval`` the one for
its dataset. FSA stays on unless ``--no-feedback``: ``--preset naclip --no-feedback`` is the
NACLIP paper's setting, ``--preset naclip`` is FSA on NACLIP's protocol. Plain data: listing
presets imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fbseg.pipeline.config import DEFAULTS, Refinement, SegmentConfig
from fbseg.registry import Registry

Overrides = tuple[tuple[str, Any], ...]
SEGMENT_DATASET = "coco-stuff"  # the config segment and explain take from a preset
DEFAULT_PRESET = "fsa"


@dataclass(frozen=True)
class Preset:
    """A method's protocol: its host, the overrides every dataset shares, and each
    dataset's own (over those)."""

    name: str
    host: str
    source: str  # the repository (and commit) the values come from
    overrides: Overrides = ()
    per_dataset: tuple[tuple[str, Overrides], ...] = ()

    def config(self, dataset: str | None = None, base: SegmentConfig = DEFAULTS) -> SegmentConfig:
        """``base`` with this preset's protocol for ``dataset`` (None: for ``segment``)."""
        own = dict(self.per_dataset).get(dataset or SEGMENT_DATASET, ())
        return base.replace(**dict(self.overrides)).replace(**dict(own))


# NACLIP's evaluation runs PAMR with 10 steps and dilations (8, 16): SegmentConfig's defaults.
PAMR_ON = (("refine", Refinement.PAMR),)

PRESETS: Registry[Preset] = Registry("preset")
for _preset in (
    Preset(
        "fsa",
        "proxyclip",
        "chi-chi-zx/FSA (ProxyCLIP host)",
        per_dataset=(
            ("voc21", (("prob_threshold", 0.2),)),
            ("context60", (("prob_threshold", 0.14),)),
            ("coco-object", (("prob_threshold", 0.3),)),
            ("cityscapes", (("short_side", 448), ("window", 224), ("stride", 80))),
            ("ade20k", (("short_side", 448),)),
        ),
    ),
    Preset(
        "proxyclip",
        "proxyclip",
        "mc-lan/ProxyCLIP@e7b767f configs/",
        per_dataset=(
            ("voc21", (("prob_threshold", 0.2),)),
            ("context60", (("prob_threshold", 0.15),)),
            ("coco-object", (("prob_threshold", 0.25),)),
            ("cityscapes", (("short_side", 448), ("window", 224), ("stride", 112))),
            ("ade20k", (("short_side", 448),)),
        ),
    ),
    Preset(
        "clearclip",
        "clearclip",
        "mc-lan/ClearCLIP@ad68a40 configs/, clearclip_segmentor.py",
        overrides=(("short_side", 448), ("window", 448), ("stride", 224), ("logit_scale", 50.0)),
        per_dataset=(
            ("voc21", (("prob_threshold", 0.5),)),
            ("context60", (("prob_threshold", 0.15),)),
            ("coco-object", (("prob_threshold", 0.4),)),
            ("cityscapes", (("window", 224),)),
        ),
    ),
    Preset(
        "sclip",
        "sclip",
        "wangf3014/SCLIP@b56bd30 configs/, clip_segmentor.py",
        overrides=(("window", 224), ("stride", 112)),
        per_dataset=(
            ("voc21", (("logit_scale", 65.0), ("prob_threshold", 0.1), ("area_threshold", 0.1))),
            ("context60", (("logit_scale", 50.0), ("prob_threshold", 0.1))),
            ("coco-object", (("logit_scale", 50.0), ("prob_threshold", 0.1))),
            ("coco-stuff", (("short_side", 448),)),
            ("cityscapes", (("short_side", 560),)),
        ),
    ),
    Preset(
        "naclip",
        "naclip",
        "sinahmr/NACLIP@0cac3a6 configs/, naclip.py",
        overrides=(("window", 224), ("stride", 112), ("renormalize", True), *PAMR_ON),
        per_dataset=(
            ("voc21", (("prob_threshold", 0.1), ("window", None))),
            ("voc20", (("window", None),)),
            ("context60", (("prob_threshold", 0.1),)),
            ("coco-object", (("prob_threshold", 0.1),)),
            ("cityscapes", (("short_side", 560),)),
        ),
    ),
):
    PRESETS.register(_preset.name, _preset)
