"""The reference inference protocol around the network: resize, sliding window, stitching,
and logits → per-class probabilities → labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fbseg.errors import InputError
from fbseg.pipeline.config import STITCH_BYTES

LONG_SIDE_CAP = 2048


def protocol_size(h: int, w: int, short_side: int | None) -> tuple[int, int]:
    """mmseg's keep-ratio resize to scale (2048, S): factor min(2048/long, S/short)."""
    if not short_side:
        return h, w
    factor = min(LONG_SIDE_CAP / max(h, w), short_side / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) float 0–255 → bilinear to ``size``, not yet rounded (``as_8bit``)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def as_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """Resized pixels (float, 0–255) rounded and clamped as an 8-bit resize leaves them; whole
    numbers in range, as unresized pixels are, come out as they went in."""
    return pixels.round().clamp(0, 255)


def window_spans(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of each window along one side; the last one snapped to the border."""
    count = max(length - window + stride - 1, 0) // stride + 1
    ends = [min(k * stride + window, length) for k in range(count)]
    return [(max(end - window, 0), end) for end in ends]


def window_boxes(h: int, w: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of each window, row by row: every row span with every column span."""
    columns = window_spans(w, window, stride)
    return [(y1, y2, x1, x2) for y1, y2 in window_spans(h, window, stride) for x1, x2 in columns]


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
    crop_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    few_shapes: bool = False,
) -> list[torch.Tensor]:
    """Sliding-window logits (C, H, W) for each normalised image (3, H, W).

    ``window`` None runs each image whole, unpadded (its grid is the floor of its size over
    the patch). Otherwise each crop is padded (centred) to ``pad_multiple``; ``crop_fn`` maps
    crops (B, 3, h, w) to grid logits (B, C, rows, cols), which are upsampled bilinearly to
    the padded crop, cut, summed over windows and divided by the per-pixel window count.
    Crops of the same size run together in batches of ``windows_per_forward`` (a number, or a
    function of the padded crop's height and width), across images: every crop's result
    depends on that crop alone, so the batching changes nothing but the speed. When a batch
    runs out of device memory it is halved and retried (``on_shrink`` hears the new size); a
    single window that does not fit raises ``WindowTooLargeError``. ``crop_transform``, when
    given, maps each stacked batch of crops before it is padded: per-pixel work such as the
    normalisation, done once per batch rather than once per image (``images`` are then what
    it takes). With ``few_shapes`` the windows left after the full batches of a crop size run
    in batches of powers of two (13 left of 32: 8, 4 and 1; ``next_batch``), so the batches of
    a crop size take only the full size and the powers of two below it (6 shapes for 32),
    rather than one shape per remainder: what replayed recordings (CUDA graphs, one per
    shape) need to be reused.

    Beside a GPU the host only queues work: about one operation per window (its add) plus a
    few per image and per batch, and one upload of the window counts per call.
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
    for (ch, cw), group in by_size.items():
        pad = centred_pad(ch, cw, pad_multiple)
        per_forward = (
            windows_per_forward(ch + pad[2] + pad[3], cw + pad[0] + pad[1])
            if callable(windows_per_forward)
            else windows_per_forward
        )
        start = 0
        while start < len(group):
            chunk = group[start : start + next_batch(len(group) - start, per_forward, few_shapes)]
            crops = torch.stack([images[i][:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk])
            if crop_transform is not None:
                crops = crop_transform(crops)
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
            _add_windows(logits, chunk, crops.shape[-2:], pad, totals, images)
    if window is None or not images:  # one window per image: nothing overlaps
        return totals
    return [
        total.div_(rows[:, None] * columns[None, :])  # in place: no copy
        for total, (rows, columns) in zip(totals, _coverage(images, window, stride))
    ]


def next_batch(left: int, per_forward: int, few_shapes: bool) -> int:
    """How many of the ``left`` windows of a crop size the next forward takes: a full batch,
    else all of them, or with ``few_shapes`` the largest power of two among them."""
    if left >= per_forward or not few_shapes:
        return min(left, per_forward)
    return 1 << (left.bit_length() - 1)


def _add_windows(
    logits: torch.Tensor,
    chunk: list[tuple[int, tuple[int, int, int, int]]],
    size: torch.Size,
    pad: tuple[int, int, int, int],
    totals: list[torch.Tensor | None],
    images: Sequence[torch.Tensor],
) -> None:
    """Upsample each window's grid logits (B, C, rows, cols) bilinearly to its padded crop
    ``size``, cut the padding and add it into its image's total (C, H, W). Windows are
    upsampled together up to ``STITCH_BYTES`` of float32 at a time (not the batch's whole
    B×C×h×w at full resolution)."""
    per_call = max(1, STITCH_BYTES // (logits.shape[1] * size[0] * size[1] * 4))
    top, left = pad[2], pad[0]
    for first in range(0, len(chunk), per_call):
        upsampled = F.interpolate(
            logits[first : first + per_call], size=size, mode="bilinear", align_corners=False
        )
        for crop, (i, (y1, y2, x1, x2)) in zip(upsampled, chunk[first : first + per_call]):
            if totals[i] is None:
                totals[i] = logits.new_zeros((logits.shape[1], *images[i].shape[1:]))
            # add_ on the view: ``total[...] += crop`` would also copy the sum onto itself
            totals[i][:, y1:y2, x1:x2].add_(crop[:, top : top + y2 - y1, left : left + x2 - x1])


def _coverage(
    images: Sequence[torch.Tensor], window: int, stride: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each image, how many windows cover each row (H,) and each column (W,), float32 on
    the images' device. The windows form a grid, so a pixel's count is its row's times its
    column's. Counted here on the host and sent in one queued copy (from pinned memory
    beside a GPU) rather than added up on the device window by window."""
    lengths = [n for img in images for n in img.shape[1:]]
    counts = np.zeros(sum(lengths), dtype=np.float32)
    offset = 0
    for n in lengths:
        for a, b in window_spans(n, window, stride):
            counts[offset + a : offset + b] += 1
        offset += n
    device = images[0].device
    host = torch.from_numpy(counts)
    if device.type == "cuda":
        host = host.pin_memory()  # the copy is queued; PyTorch keeps the buffer until it ran
    # elsewhere a plain copy: ``host`` is let go at once (meta, which holds no data, as CUDA)
    parts = host.to(device, non_blocking=device.type in ("cuda", "meta")).split(lengths)
    return list(zip(parts[0::2], parts[1::2]))


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
