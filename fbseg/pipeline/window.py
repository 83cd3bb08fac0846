"""The reference inference protocol around the network: resize, sliding window, stitching,
and logits → per-class probabilities → labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fbseg.errors import InputError
from fbseg.pipeline.config import Refinement, SegmentConfig
from fbseg.pipeline.refine import pamr

LONG_SIDE_CAP = 2048


def protocol_size(h: int, w: int, short_side: int | None) -> tuple[int, int]:
    """mmseg's keep-ratio resize to scale (2048, S): factor min(2048/long, S/short)."""
    if not short_side:
        return h, w
    factor = min(LONG_SIDE_CAP / max(h, w), short_side / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) float 0–255 → bilinear to ``size``, rounded as an 8-bit resize would be."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    return out.round().clamp(0, 255)


def window_boxes(h: int, w: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of each window, row by row; the last one snapped to the border."""
    rows = max(h - window + stride - 1, 0) // stride + 1
    cols = max(w - window + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + window, h), min(c * stride + window, w)
            boxes.append((max(y2 - window, 0), y2, max(x2 - window, 0), x2))
    return boxes


def boxes_for(h: int, w: int, window: int | None, stride: int) -> list[tuple[int, int, int, int]]:
    """The windows of an image: ``window_boxes``, or the whole image when ``window`` is None."""
    return [(0, h, 0, w)] if window is None else window_boxes(h, w, window, stride)


def centred_pad(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding to a multiple; the odd pixel goes right/bottom."""
    lr = (-w) % multiple
    tb = (-h) % multiple
    return lr // 2, lr - lr // 2, tb // 2, tb - tb // 2


def slide_many(
    images: Sequence[torch.Tensor],
    crop_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    window: int | None,
    stride: int,
    pad_multiple: int,
    windows_per_forward: int = 8,
    on_shrink: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Sliding-window logits (C, H, W) for each normalised image (3, H, W).

    ``window`` None runs each image whole, unpadded (its grid is the floor of its size over
    the patch). Otherwise each crop is padded (centred) to ``pad_multiple``; ``crop_fn`` maps crops (B, 3, h, w) to
    grid logits (B, C, rows, cols), which are upsampled bilinearly to the padded crop, cut,
    summed over windows and divided by the per-pixel window count. Crops of the same size run
    together in batches of ``windows_per_forward``, across images: every crop's result depends on that
    crop alone, so the batching changes nothing but the speed. When a batch runs out of
    device memory it is halved and retried (``on_shrink`` hears the new size); a single
    window that does not fit raises ``WindowTooLargeError``.
    """
    if window is None:
        pad_multiple = 1
    jobs = [
        (i, box)
        for i, img in enumerate(images)
        for box in boxes_for(img.shape[1], img.shape[2], window, stride)
    ]
    by_size: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int]]]] = {}
    for i, (y1, y2, x1, x2) in jobs:
        by_size.setdefault((y2 - y1, x2 - x1), []).append((i, (y1, y2, x1, x2)))
    totals: list[torch.Tensor | None] = [None] * len(images)
    counts = [img.new_zeros((1, *img.shape[1:]), dtype=torch.float32) for img in images]
    for (ch, cw), group in by_size.items():
        pad = centred_pad(ch, cw, pad_multiple)
        start = 0
        while start < len(group):
            chunk = group[start : start + windows_per_forward]
            crops = torch.stack([images[i][:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk])
            if any(pad):
                crops = F.pad(crops, pad)
            try:
                logits = crop_fn(crops).float()
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                del crops
                free_cached_memory()
                if len(chunk) == 1:
                    raise WindowTooLargeError(
                        f"one {ch}×{cw} window does not fit in the device's memory "
                        "(try a smaller --window or --short-side, or --precision fp16)"
                    ) from None
                windows_per_forward = max(1, len(chunk) // 2)
                if on_shrink is not None:
                    on_shrink(windows_per_forward)
                continue
            start += len(chunk)
            logits = F.interpolate(
                logits, size=crops.shape[-2:], mode="bilinear", align_corners=False
            )
            logits = logits[:, :, pad[2] : pad[2] + ch, pad[0] : pad[0] + cw]
            for (i, (y1, y2, x1, x2)), crop in zip(chunk, logits):
                if totals[i] is None:
                    totals[i] = logits.new_zeros((logits.shape[1], *images[i].shape[1:]))
                totals[i][:, y1:y2, x1:x2] += crop
                counts[i][:, y1:y2, x1:x2] += 1
    return [total / count for total, count in zip(totals, counts)]


class WindowTooLargeError(InputError):
    """A single window does not fit in the device's memory: its image fails, the run goes on."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator's failure on other devices."""
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def free_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def slide(
    image: torch.Tensor,
    crop_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    window: int,
    stride: int,
    pad_multiple: int,
    windows_per_forward: int = 8,
) -> torch.Tensor:
    """``slide_many`` for one image: logits (C, H, W)."""
    return slide_many(
        [image],
        crop_fn,
        window=window,
        stride=stride,
        pad_multiple=pad_multiple,
        windows_per_forward=windows_per_forward,
    )[0]


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) → (C, H, W), bilinear (align_corners False), as is when it fits."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def class_probabilities(
    logits: torch.Tensor,
    out_size: tuple[int, int],
    logit_scale: float,
    name_to_class: Sequence[int],
) -> torch.Tensor:
    """Name logits (C, h, w) → resized to ``out_size`` → ×scale → softmax over names → max
    over each class's names: (K, H, W)."""
    probs = torch.softmax(resize_to(logits, out_size) * logit_scale, dim=0)
    return class_maximum(probs, name_to_class)


def class_maximum(per_name: torch.Tensor, name_to_class: Sequence[int]) -> torch.Tensor:
    """(C, H, W) per name → (K, H, W): each class takes the maximum over its names."""
    K = max(name_to_class) + 1
    if K == per_name.shape[0]:
        return per_name
    out = per_name.new_empty((K, *per_name.shape[1:]))
    for k in range(K):
        members = [i for i, c in enumerate(name_to_class) if c == k]
        out[k] = per_name[members].amax(dim=0)
    return out


def labels_from_probs(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """argmax over classes; pixels whose top probability is below ``threshold`` → class 0."""
    top, labels = probs.max(dim=0)
    if threshold > 0:
        labels = torch.where(top < threshold, torch.zeros_like(labels), labels)
    return labels


def drop_small_areas(probs: torch.Tensor, share: float) -> torch.Tensor:
    """SCLIP's ``area_thd``: the probabilities (K, H, W) of every class but 0 whose argmax area
    is not above ``share`` of the area predicted for all classes but 0 are set to 0."""
    area = torch.bincount(probs.argmax(dim=0).flatten(), minlength=probs.shape[0])[1:]
    keep = (area > share * area.sum()).to(probs.dtype)
    out = probs.clone()
    out[1:] *= keep[:, None, None]
    return out


def probabilities_and_labels(
    logits: torch.Tensor,
    out_size: tuple[int, int],
    config: SegmentConfig,
    name_to_class: Sequence[int],
    guide: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stitched name logits (C, h, w) → per-class probabilities (K, H, W) at ``out_size`` and
    labels (H, W): the post-processing of every path (segment, compare, explain).

    In order: logits resized to ``out_size``; PAMR guided by ``guide`` (the normalised
    protocol image (3, h', w'), resized likewise) when ``config.refine`` asks for it; ×scale,
    softmax over names, max over each class's names; SCLIP's area threshold; argmax and the
    probability threshold; NACLIP's renormalisation (probabilities only).
    """
    logits = resize_to(logits, out_size)
    if config.refine is Refinement.PAMR:
        if guide is None:
            raise ValueError("PAMR needs the guide image")
        logits = pamr(
            resize_to(guide.float(), out_size),
            logits.float(),
            config.pamr_steps,
            config.pamr_dilations,
        )
    probs = class_probabilities(logits, out_size, config.logit_scale, name_to_class)
    if config.area_threshold is not None:
        probs = drop_small_areas(probs, config.area_threshold)
    labels = labels_from_probs(probs, config.prob_threshold)
    if config.renormalize:
        probs = probs / probs.sum(dim=0, keepdim=True)
    return probs, labels
