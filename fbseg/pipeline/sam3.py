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

from fbseg import __version__
from fbseg.classes import ClassList
from fbseg.io import ImageLike, read_image
from fbseg.models.sam3 import TEXT_LENGTH, Sam3Parts, load_sam3
from fbseg.models.text import TextCache, text_cache_root
from fbseg.pipeline.config import DEFAULTS, SegmentConfig
from fbseg.pipeline.device import resolve_device, resolve_precision
from fbseg.pipeline.postprocess import (
    class_maximum,
    device_result,
    labels_from_probs,
    resize_to,
    results_from_device,
)
from fbseg.pipeline.segmenter import PROTOCOL_VERSION, as_classes
from fbseg.pipeline.window import (
    WindowTooLargeError,
    free_cached_memory,
    is_out_of_memory,
)
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
        text_cache_dir: Path | None = None,
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
        self.text_cache = TextCache(text_cache_dir, self.text_identity())

    @classmethod
    def from_pretrained(
        cls, checkpoint: str | Path | None = None, *, text_cache: bool = True, **kwargs
    ) -> Sam3Segmenter:
        """SAM 3 from a ``save_pretrained`` folder or the hub (gated: see the README); name
        features cached on disk under $FBSEG_CACHE unless ``text_cache`` is False."""
        kwargs.setdefault("text_cache_dir", text_cache_root() if text_cache else None)
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

    def text_identity(self) -> dict:
        """What decides a name's text features (the key of their disk cache)."""
        return {
            "engine": self.name,
            "weights": self.weights_id,
            "text_length": TEXT_LENGTH,
            "precision": str(self.dtype).replace("torch.", ""),
            "protocol": PROTOCOL_VERSION,
        }

    def names_to_encode(self, classes: ClassList | str | Sequence[str]) -> list[str]:
        """The names ``encode_text`` would still run through the text encoder (not cached)."""
        names = [n for n in as_classes(classes).flat_names if n not in self._text]
        return self.text_cache.uncached(names)

    @torch.inference_mode()
    def encode_text(self, classes: ClassList | str | Sequence[str]) -> torch.Tensor:
        """Each name's projected text features (C, L, D), encoded once and kept on disk like
        the CLIP engine's embeddings; names longer than 32 tokens are noted as truncated."""
        names = as_classes(classes).flat_names
        new = [n for n in dict.fromkeys(names) if n not in self._text]
        if new:  # each name's length checked once, whether its features come from disk or not
            full = self.tokenizer(new)["input_ids"]
            self.truncated |= {n for n, ids in zip(new, full) if len(ids) > TEXT_LENGTH}
        missing = []
        for n in new:
            stored = self.text_cache.get(n)
            if stored is None:
                missing.append(n)
                self.text_cache.misses += 1
                continue
            self.text_cache.hits += 1
            both = torch.from_numpy(stored).to(self.device)
            self._text[n] = (both[:, :-1].to(self.dtype), both[:, -1].long())
        if missing:
            tokens = self.tokenizer(
                missing,
                padding="max_length",
                max_length=TEXT_LENGTH,
                truncation=True,
                return_tensors="pt",
            )
            ids = tokens["input_ids"].to(self.device)
            mask = tokens["attention_mask"].to(self.device)
            feats = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            for i, n in enumerate(missing):
                self._text[n] = (feats[i], mask[i])
                both = torch.cat([feats[i].float(), mask[i, :, None].float()], dim=1)
                self.text_cache.put(n, both.cpu().numpy())
        return torch.stack([self._text[n][0] for n in names])

    def _names_per_forward(self, vision) -> int:
        """Names per forward: the set size, or on a GPU what the free memory holds (each name
        repeats the image features and their activations, about 8× the features' size)."""
        if self.device.type != "cuda":
            return self.names_per_forward
        free, _ = torch.cuda.mem_get_info(self.device)
        per_name = 8 * sum(t[0].numel() * t.element_size() for t in vision.fpn_hidden_states)
        return max(1, min(self.names_per_forward, int(0.5 * free // max(per_name, 1))))

    @torch.inference_mode()
    def name_scores(self, pixel_values: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """(B, C, h, w) scores for images (B, 3, S, S) and their names, at SAM 3's mask size.
        The images are encoded together, once; the names run in chunks against each image's
        cached features. A chunk out of memory is halved and retried."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        self.encode_text(list(names))
        vision = self.model.get_vision_features(
            pixel_values=pixel_values.to(self.device, self.dtype)
        )
        per_forward = self._names_per_forward(vision)
        images = []
        for b in range(pixel_values.shape[0]):
            out, start = [], 0
            while start < len(names):
                chunk = names[start : start + per_forward]
                n = len(chunk)
                repeated = type(vision)(
                    fpn_hidden_states=tuple(
                        t[b : b + 1].expand(n, *t.shape[1:]) for t in vision.fpn_hidden_states
                    ),
                    fpn_position_encoding=tuple(
                        t[b : b + 1].expand(n, *t.shape[1:]) for t in vision.fpn_position_encoding
                    ),
                )
                text = torch.stack([self._text[c][0] for c in chunk])
                mask = torch.stack([self._text[c][1] for c in chunk])
                try:
                    result = self.model(
                        vision_embeds=repeated,
                        text_embeds=BaseModelOutputWithPooling(pooler_output=text),
                        attention_mask=mask,
                    )
                except RuntimeError as exc:
                    if not is_out_of_memory(exc):
                        raise
                    free_cached_memory()
                    if n == 1:
                        raise WindowTooLargeError(
                            "one class name against the image does not fit in the device's "
                            "memory (try --precision fp16)"
                        ) from None
                    per_forward = self.names_per_forward = max(1, n // 2)
                    continue
                sem = torch.sigmoid(result.semantic_seg[:, 0].float())
                presence = torch.sigmoid(result.presence_logits.float()).view(n, 1, 1)
                out.append(sem * presence)
                start += n
            images.append(torch.cat(out))
        return torch.stack(images)

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
        if not images:
            return []
        t0 = time.perf_counter()
        ready = [im if isinstance(im, Sam3Image) else self.prepare(im) for im in images]
        all_scores = self.name_scores(torch.stack([p.pixel_values for p in ready]), cl.flat_names)
        pending = []
        for prepared, scores in zip(ready, all_scores):
            size = prepared.rgb.shape[:2]
            probs = class_maximum(resize_to(scores, size), cl.name_to_class)
            labels = labels_from_probs(probs, cfg.prob_threshold)
            pending.append(device_result(probs, labels, _recompute_probs(scores, size, cl)))
        results = results_from_device(pending, cl.labels, cl.names)  # the one wait
        seconds = (time.perf_counter() - t0) / len(ready)
        for r in results:
            r.meta = self._meta(cfg, seconds, cl)
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


def _recompute_probs(scores: torch.Tensor, size: tuple[int, int], cl: ClassList):
    """The class probabilities (K, H, W) of an image's name scores, computed again when asked."""
    return lambda: class_maximum(resize_to(scores, size), cl.name_to_class)
