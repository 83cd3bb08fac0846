"""Segmentation results as plain numpy (no torch needed to read them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ClassSummary:
    index: int
    label: str
    names: tuple[str, ...]
    pixel_fraction: float
    mean_confidence: float  # mean probability of this class over the pixels labelled with it
    max_confidence: float  # highest probability of this class anywhere

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "class": self.label,
            "names": list(self.names),
            "pixel_fraction": self.pixel_fraction,
            "mean_confidence": self.mean_confidence,
            "max_confidence": self.max_confidence,
        }


@dataclass(frozen=True)
class SegmentationResult:
    """labels (H, W) int64 class index; probs (K, H, W) float32 per-class probability
    (softmax over names after the logit scale, max over each class's names); classes: the K
    class strings as given; names: each class's names; meta: model, host, settings, timings."""

    labels: np.ndarray
    probs: np.ndarray
    classes: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]
    meta: dict = field(default_factory=dict)
    baseline_labels: np.ndarray | None = None  # (H, W) host only (FSA off), when compared

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))

    def summary(self) -> list[ClassSummary]:
        total = self.labels.size
        counts = np.bincount(self.labels.ravel(), minlength=len(self.classes))
        out = []
        for k, label in enumerate(self.classes):
            mask = self.labels == k
            mean = float(self.probs[k][mask].mean()) if counts[k] else 0.0
            out.append(
                ClassSummary(
                    k,
                    label,
                    self.names[k],
                    float(counts[k] / total),
                    mean,
                    float(self.probs[k].max()),
                )
            )
        return out

    def comparison(self) -> dict | None:
        """Host only vs FSA: per-class pixel fractions, their change, the changed pixels."""
        if self.baseline_labels is None:
            return None
        K, total = len(self.classes), self.labels.size
        before = np.bincount(self.baseline_labels.ravel(), minlength=K) / total
        after = np.bincount(self.labels.ravel(), minlength=K) / total
        return {
            "changed_pixel_fraction": float((self.baseline_labels != self.labels).mean()),
            "classes": [
                {
                    "class": c,
                    "baseline_fraction": float(b),
                    "feedback_fraction": float(a),
                    "change": float(a - b),
                }
                for c, b, a in zip(self.classes, before, after)
            ],
        }

    def to_json(self, classes: list[ClassSummary] | None = None) -> dict:
        """The per-image JSON; ``classes`` is ``summary()`` if already computed."""
        h, w = self.image_size
        out = {
            "schema_version": 1,
            "image_size": {"height": h, "width": w},
            "classes": [s.to_dict() for s in (classes or self.summary())],
            **self.meta,
        }
        if self.baseline_labels is not None:
            out["compare"] = self.comparison()
        return out
