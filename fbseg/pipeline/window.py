"""The reference inference protocol around the network: resize, sliding window, stitching,
and logits → per-class probabilities → labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fbseg.errors import InputError

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
    windows_per_forward: int | Callable[[int, int], int] = 8,
    on_shrink: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Sliding-window logits (C, H, W) for each normalised image (3, H, W).

    ``window`` None runs each image whole, unpadded (its grid is the floor of its size over
    the patch). Otherwise each crop is padded (centred) to ``pad_multiple``; ``crop_fn`` maps crops (B, 3, h, w) to
    grid logits (B, C, rows, cols), which are upsampled bilinearly to the padded crop, cut,
    summed over windows and divided by the per-pixel window count. Crops of the same size run
    together in batches of ``windows_per_forward`` (a number, or a function of the padded crop's
    height and width), across images: every crop's result depends on that
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
        per_forward = (
            windows_per_forward(ch + pad[2] + pad[3], cw + pad[0] + pad[1])
            if callable(windows_per_forward)
            else windows_per_forward
        )
        start = 0
        while start < len(group):
            chunk = group[start : start + per_forward]
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
                per_forward = windows_per_forward = max(1, len(chunk) // 2)
                if on_shrink is not None:
                    on_shrink(per_forward)
                continue
            start += len(chunk)
            size = crops.shape[-2:]
            for j, (i, (y1, y2, x1, x2)) in enumerate(chunk):
                # one window at a time: C×h×w, not the batch's B×C×h×w, at full resolution
                crop = F.interpolate(
                    logits[j : j + 1], size=size, mode="bilinear", align_corners=False
                )[0]
                if totals[i] is None:
                    totals[i] = logits.new_zeros((logits.shape[1], *images[i].shape[1:]))
                totals[i][:, y1:y2, x1:x2] += crop[:, pad[2] : pad[2] + ch, pad[0] : pad[0] + cw]
                counts[i][:, y1:y2, x1:x2] += 1
    return [total.div_(count) for total, count in zip(totals, counts)]  # in place: no copy


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
