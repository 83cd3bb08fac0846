"""What a run needs from a model, whatever it is: the contract between ``pipeline`` and
``runs``/``eval``. Everything after per-class scores at the image size (outputs, folder runs,
evaluation, torchrun, summaries) sees only this and ``SegmentationResult``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from fbseg.classes import ClassList
from fbseg.pipeline.config import SegmentConfig
from fbseg.result import SegmentationResult


class Engine(Protocol):
    """A segmenter of images into free-text classes (``Segmenter`` is the CLIP + host + FSA one)."""

    device: torch.device
    config: SegmentConfig

    def prepare(self, image: Any, config: SegmentConfig | None = None) -> Any:
        """Decode and resize one image (CPU, thread-safe): the payload ``segment_batch`` takes."""

    def segment_batch(
        self,
        images: Sequence[Any],
        classes: ClassList,
        config: SegmentConfig | None = None,
        *,
        compare: bool = False,
    ) -> list[SegmentationResult]:
        """Per-class scores and labels at each image's size."""

    def encode_text(self, classes: ClassList) -> torch.Tensor:
        """Embed the class names once (cached), so a bad list fails before the first image."""

    def names_to_encode(self, classes: ClassList) -> list[str]:
        """The names ``encode_text`` would still run through the text encoder (not cached):
        the CLI says so before the wait of a first use."""

    def identity(self, config: SegmentConfig | None = None) -> dict:
        """Everything besides the image and the protocol that decides the output."""
