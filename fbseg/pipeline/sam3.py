"""The SAM 3 engine: the same ``SegmentationResult`` as the CLIP engine, from SAM 3's semantic
head (docs/method.md, "The SAM 3 engine").

Per name n and pixel x: ``score_n(x) = sigmoid(semantic_seg_n(x)) · sigmoid(presence_n)``,
resized bilinearly to the image; a class's score is the maximum over its names; labels are
the argmax over classes, and pixels whose top score is below ``prob_threshold`` go to class 0
— the class grammar and background rules of the CLIP engine. ``result.probs`` holds these
scores (not a softmax). The image is encoded once; each name's text once per run; the names
are then run against the cached image features, many per forward.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fbseg import __version__
from fbseg.classes import ClassList
from fbseg.io import ImageLike, read_image
from fbseg.models.sam3 import TEXT_LENGTH, Sam3Parts, load_sam3
from fbseg.pipeline.config import DEFAULTS, SegmentConfig
from fbseg.pipeline.device import resolve_device, resolve_precision
from fbseg.pipeline.segmenter import PROTOCOL_VERSION, as_classes
from fbseg.pipeline.window import labels_from_probs
from fbseg.result import SegmentationResult

NAMES_PER_FORWARD = 16  # each name repeats the image features along the batch
SCORES = "sigmoid(semantic_seg) * sigmoid(presence), max over a class's names (not a softmax)"


@dataclass(frozen=True)
class Sam3Image:
    """An image ready for SAM 3: rgb (H, W, 3) uint8 as read; pixel_values (3, S, S)."""

    rgb: np.ndarray
    pixel_values: torch.Tensor


class Sam3Segmenter:
    """SAM 3 as an fbseg engine: ``segment(image, classes)`` → ``SegmentationResult``.

    Only ``prob_threshold`` of ``SegmentConfig`` applies (the background threshold); SAM 3
    runs at its own image size, so the short side, window, stride, logit scale and FSA's
    settings do not.
    """

    name = "sam3"

    def __init__(
        self,
        parts: Sam3Parts,
        *,
        device: str = "auto",
        precision: str = "auto",
        config: SegmentConfig = DEFAULTS,
        names_per_forward: int = NAMES_PER_FORWARD,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.model = parts.model.to(self.device, self.dtype).eval()
        self.image_processor = parts.image_processor
        self.tokenizer = parts.tokenizer
        self.weights_id = parts.weights_id
        self.config = config
        self.names_per_forward = names_per_forward
        self._text: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.truncated: set[str] = set()

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path | None = None, **kwargs) -> Sam3Segmenter:
        """SAM 3 from a ``save_pretrained`` folder or the hub (gated: see the README)."""
        resolve_precision(
            kwargs.get("precision", "auto"), resolve_device(kwargs.get("device", "auto"))
        )
        return cls(load_sam3(checkpoint), **kwargs)

    def prepare(
        self, image: ImageLike | np.ndarray, config: SegmentConfig | None = None, **overrides
    ) -> Sam3Image:
        """Decode and preprocess as Sam3Processor does (CPU; safe in a worker thread)."""
        rgb = read_image(image)
        pixels = self.image_processor(images=np.array(rgb), return_tensors="pt")["pixel_values"][0]
        return Sam3Image(rgb, pixels)

    @torch.inference_mode()
    def encode_text(self, classes: ClassList | str | Sequence[str]) -> torch.Tensor:
        """Each name's projected text features, once per run: (C, L, D) for the names."""
        names = as_classes(classes).flat_names
        missing = [n for n in dict.fromkeys(names) if n not in self._text]
        if missing:
            tokens = self.tokenizer(
                missing,
                padding="max_length",
                max_length=TEXT_LENGTH,
                truncation=True,
                return_tensors="pt",
            )
            full = self.tokenizer(missing)["input_ids"]
            self.truncated |= {n for n, ids in zip(missing, full) if len(ids) > TEXT_LENGTH}
            ids = tokens["input_ids"].to(self.device)
            mask = tokens["attention_mask"].to(self.device)
            feats = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            for i, n in enumerate(missing):
                self._text[n] = (feats[i], mask[i])
        return torch.stack([self._text[n][0] for n in names])

    @torch.inference_mode()
    def name_scores(self, pixel_values: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """(C, h, w) scores for one image (3, S, S) and its names, at SAM 3's mask size."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        self.encode_text(list(names))
        vision = self.model.get_vision_features(
            pixel_values=pixel_values[None].to(self.device, self.dtype)
        )
        out = []
        for start in range(0, len(names), self.names_per_forward):
            chunk = names[start : start + self.names_per_forward]
            n = len(chunk)
            repeated = type(vision)(
                fpn_hidden_states=tuple(
                    t.expand(n, *t.shape[1:]) for t in vision.fpn_hidden_states
                ),
                fpn_position_encoding=tuple(
                    t.expand(n, *t.shape[1:]) for t in vision.fpn_position_encoding
                ),
            )
            text = torch.stack([self._text[c][0] for c in chunk])
            mask = torch.stack([self._text[c][1] for c in chunk])
            result = self.model(
                vision_embeds=repeated,
                text_embeds=BaseModelOutputWithPooling(pooler_output=text),
                attention_mask=mask,
            )
            sem = torch.sigmoid(result.semantic_seg[:, 0].float())
            presence = torch.sigmoid(result.presence_logits.float()).view(n, 1, 1)
            out.append(sem * presence)
        return torch.cat(out)

    @torch.inference_mode()
    def segment(
        self,
        image,
        classes,
        config: SegmentConfig | None = None,
        *,
        compare: bool = False,
        **overrides,
    ) -> SegmentationResult:
        return self.segment_batch([image], classes, config, compare=compare, **overrides)[0]

    @torch.inference_mode()
    def segment_batch(
        self,
        images,
        classes,
        config: SegmentConfig | None = None,
        *,
        compare: bool = False,
        **overrides,
    ) -> list[SegmentationResult]:
        """Segment several images (path, PIL, array or ``prepare``d)."""
        from fbseg.errors import ConfigError

        if compare:
            raise ConfigError("--compare shows what FSA changes; the sam3 engine has no FSA")
        cfg = (config or self.config).replace(**overrides)
        cl = as_classes(classes)
        results = []
        for image in images:
            t0 = time.perf_counter()
            prepared = image if isinstance(image, Sam3Image) else self.prepare(image)
            scores = self.name_scores(prepared.pixel_values, cl.flat_names)
            H, W = prepared.rgb.shape[:2]
            scores = F.interpolate(scores[None], size=(H, W), mode="bilinear", align_corners=False)[
                0
            ]
            probs = torch.stack(
                [
                    scores[[i for i, c in enumerate(cl.name_to_class) if c == k]].amax(dim=0)
                    for k in range(len(cl.labels))
                ]
            )
            labels = labels_from_probs(probs, cfg.prob_threshold)
            meta = self._meta(cfg, time.perf_counter() - t0, cl)
            results.append(
                SegmentationResult(
                    labels=labels.cpu().numpy().astype(np.int64),
                    probs=probs.cpu().numpy(),
                    classes=cl.labels,
                    names=cl.names,
                    meta=meta,
                )
            )
        return results

    def identity(self, config: SegmentConfig | None = None) -> dict:
        return {
            "engine": self.name,
            "model": "sam3",
            "weights": self.weights_id,
            "protocol": PROTOCOL_VERSION,
            "precision": str(self.dtype).replace("torch.", ""),
        }

    def _meta(self, cfg: SegmentConfig, seconds: float, cl: ClassList) -> dict:
        meta = {
            "fbseg_version": __version__,
            "engine": self.name,
            "model": "sam3",
            "scores": SCORES,
            "settings": {
                "prob_threshold": cfg.prob_threshold,
                "device": str(self.device),
                "precision": str(self.dtype).replace("torch.", ""),
            },
            "timings": {"total_s": round(seconds, 4)},
        }
        cut = sorted(n for n in cl.flat_names if n in self.truncated)
        if cut:
            meta["truncated_names"] = cut  # longer than SAM 3's 32 text tokens
        return meta
