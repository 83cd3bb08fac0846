"""Segmentation results as plain numpy (no torch needed to read them)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Rows of ``SegmentationResult.class_stats`` (3, K).
STAT_PIXELS, STAT_MEAN, STAT_MAX = 0, 1, 2


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


def class_stats_of(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(3, K) float64: each class's pixel count, its mean probability over the pixels labelled
    with it (0 where none) and its highest probability anywhere."""
    K = probs.shape[0]
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=K)[:K]
    picked = np.take_along_axis(probs.reshape(K, -1), flat[None], axis=0)[0]
    sums = np.bincount(flat, weights=picked.astype(np.float64), minlength=K)[:K]
    means = np.divide(sums, counts, out=np.zeros(K), where=counts > 0)
    return np.stack([counts.astype(np.float64), means, probs.reshape(K, -1).max(axis=1)])


def narrow_label_type(classes: int) -> np.dtype:
    """The narrowest integer type that holds class indices below ``classes`` (uint8 up to
    256 classes): what labels are kept in, sent in and stored in a mask PNG."""
    return np.min_scalar_type(max(classes - 1, 0))


class SegmentationResult:
    """One image's segmentation.

    labels (H, W) int64 class index (kept in ``compact_labels``' narrow type and widened on
    first access: a folder run that only writes files never widens it); probs (K, H, W)
    float32 per-class probability (softmax over names after the logit scale, max over each
    class's names); classes: the K class strings as given; names: each class's names; meta:
    model, host, settings, timings; baseline_labels (H, W): the host alone (FSA off), when
    compared.

    ``probs`` may be given as a function that computes it: it then runs on first access
    (engines keep the K×H×W map on their device and move only the labels and ``class_stats``
    to the host — the summary needs no probabilities). ``class_stats`` (3, K): pixel count,
    mean confidence over the class's pixels, max confidence; computed from labels and probs
    when not given.

    ``probs_float16`` (K, H, W) is ``probs`` rounded to the nearest float16, what
    ``--save-probs`` stores. An engine may give it, or a function that rounds the map where it
    keeps it (on its device: half the bytes cross to the host, and a writer process receives
    half); else it is rounded from ``probs``.
    """

    __slots__ = (
        "_labels",
        "classes",
        "names",
        "meta",
        "_baseline",
        "_converted",
        "_probs",
        "_probs_fn",
        "_probs16",
        "_probs16_fn",
        "_stats",
        "_lock",
        "__weakref__",
    )

    def __init__(
        self,
        labels: np.ndarray,
        probs: np.ndarray | Callable[[], np.ndarray],
        classes: tuple[str, ...],
        names: tuple[tuple[str, ...], ...],
        meta: dict | None = None,
        baseline_labels: np.ndarray | None = None,
        *,
        class_stats: np.ndarray | None = None,
        probs_float16: np.ndarray | Callable[[], np.ndarray] | None = None,
    ) -> None:
        self._labels = labels
        self.classes = tuple(classes)
        self.names = tuple(names)
        self.meta = {} if meta is None else meta
        self._baseline = baseline_labels
        self._converted: dict[tuple[str, np.dtype], np.ndarray] = {}
        self._probs, self._probs_fn = (None, probs) if callable(probs) else (probs, None)
        self._probs16, self._probs16_fn = (
            (None, probs_float16) if callable(probs_float16) else (probs_float16, None)
        )
        self._stats = class_stats
        self._lock = threading.Lock()

    def __reduce__(self):
        """Pickled (to a writer process) with its probabilities only if they were formed
        already: read ``probs`` or ``probs_float16`` first to send them; a lazy map stays on
        its device. Labels travel in the narrowest integer type their classes need (uint8 up
        to 256)."""
        with self._lock:
            probs, probs16 = self._probs, self._probs16
        return (
            _unpickled,
            (
                self.compact_labels,
                probs,
                probs16,
                self.classes,
                self.names,
                self.meta,
                self.compact_baseline_labels,
                self.class_stats,
            ),
        )

    @property
    def labels(self) -> np.ndarray:
        """(H, W) int64 class index."""
        return self._in_type("labels", self._labels, np.dtype(np.int64))

    @property
    def baseline_labels(self) -> np.ndarray | None:
        """(H, W) int64 class index of the host alone (FSA off), when compared."""
        if self._baseline is None:
            return None
        return self._in_type("baseline", self._baseline, np.dtype(np.int64))

    @property
    def compact_labels(self) -> np.ndarray:
        """``labels`` in ``narrow_label_type`` (uint8 up to 256 classes): the same values at
        an eighth of the memory, for masks and for sending."""
        return self._in_type("labels", self._labels, narrow_label_type(len(self.classes)))

    @property
    def compact_baseline_labels(self) -> np.ndarray | None:
        """``baseline_labels`` in ``narrow_label_type``, when compared."""
        if self._baseline is None:
            return None
        return self._in_type("baseline", self._baseline, narrow_label_type(len(self.classes)))

    def _in_type(self, key: str, labels: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """``labels`` in ``dtype``, converted once per type: engines hand them over narrow
        and ``labels`` widens them; labels given wide are narrowed for masks and sending."""
        if labels.dtype == dtype:
            return labels
        with self._lock:
            if (key, dtype) not in self._converted:
                self._converted[key, dtype] = labels.astype(dtype)
            return self._converted[key, dtype]

    @property
    def probs(self) -> np.ndarray:
        """(K, H, W) float32; computed on first access when the engine left it on its device
        (the device copy is released then)."""
        with self._lock:
            return self._formed_probs()

    @property
    def probs_float16(self) -> np.ndarray:
        """(K, H, W) float16: ``probs`` rounded to the nearest (ties to even, as numpy's
        ``astype`` rounds); formed once, by the engine's function while ``probs`` is not
        formed yet."""
        with self._lock:
            if self._probs16 is None:
                if self._probs is None and self._probs16_fn is not None:
                    self._probs16 = self._probs16_fn()
                else:
                    self._probs16 = self._formed_probs().astype(np.float16)
                self._probs16_fn = None
            return self._probs16

    def _formed_probs(self) -> np.ndarray:
        """``probs``, formed now if it is not yet (the device copy is released then); the
        caller holds the lock."""
        if self._probs is None:
            self._probs = self._probs_fn()
            self._probs_fn = self._probs16_fn = None
        return self._probs

    @property
    def class_stats(self) -> np.ndarray:
        """(3, K) float64 rows: pixel count, mean confidence over the class's pixels, max
        confidence (``STAT_PIXELS``, ``STAT_MEAN``, ``STAT_MAX``)."""
        if self._stats is None:
            self._stats = class_stats_of(self.labels, self.probs)
        return self._stats

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self._labels.shape[0]), int(self._labels.shape[1]))

    def summary(self) -> list[ClassSummary]:
        stats, total = self.class_stats, self._labels.size
        return [
            ClassSummary(
                k,
                label,
                self.names[k],
                float(stats[STAT_PIXELS, k] / total),
                float(stats[STAT_MEAN, k]),
                float(stats[STAT_MAX, k]),
            )
            for k, label in enumerate(self.classes)
        ]

    def digest(self) -> ResultDigest:
        """What a run keeps of an image once its files are written (no arrays)."""
        return ResultDigest(self.image_size, tuple(self.summary()), self.meta)

    def comparison(self) -> dict | None:
        """Host only vs FSA: per-class pixel fractions, their change, the changed pixels."""
        if self.baseline_labels is None:
            return None
        K, total = len(self.classes), self._labels.size
        before_labels, after_labels = self.compact_baseline_labels, self.compact_labels
        before = np.bincount(before_labels.ravel(), minlength=K) / total
        after = np.bincount(after_labels.ravel(), minlength=K) / total
        return {
            "changed_pixel_fraction": float((before_labels != after_labels).mean()),
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
        if self._baseline is not None:
            out["compare"] = self.comparison()
        return out

    def __repr__(self) -> str:
        h, w = self.image_size
        return f"SegmentationResult({w}×{h}, classes={list(self.classes)!r})"


def _probs_not_sent() -> np.ndarray:
    raise ValueError(
        "this result was sent without these probabilities "
        "(read .probs or .probs_float16 before sending it)"
    )


def _unpickled(labels, probs, probs16, classes, names, meta, baseline_labels, class_stats):
    return SegmentationResult(
        labels,
        _probs_not_sent if probs is None else probs,
        classes,
        names,
        meta,
        baseline_labels,
        class_stats=class_stats,
        probs_float16=probs16,
    )


@dataclass(frozen=True)
class ResultDigest:
    """An image's size, class summary and meta: what a folder run keeps per image."""

    image_size: tuple[int, int]
    classes: tuple[ClassSummary, ...]
    meta: dict
