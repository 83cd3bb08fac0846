"""Small constant tensors kept on the device they are used on.

A tensor built from Python values inside a forward is built on the CPU and copied to the
device on every call; on a GPU each such copy makes the host wait for the queued work. These
are built once per device and dtype instead (as ordinary tensors, usable in and out of
inference mode).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def channel_constant(
    values: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Per-channel ``values`` as a (1, C, 1, 1) tensor on ``device``."""
    return on_device(
        lambda: torch.tensor(values, dtype=dtype).view(1, -1, 1, 1),
        ("channel", tuple(values)),
        device,
        dtype,
    )


_COPIES: dict[tuple, torch.Tensor] = {}
_COPIES_MAX = 256


def on_device(
    build: Callable[[], torch.Tensor], key: tuple, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``build()`` (a CPU tensor that depends on ``key`` alone) on ``device`` in ``dtype``,
    copied there once per (key, device, dtype)."""
    full = (key, torch.device(device), dtype)
    if full not in _COPIES:
        if len(_COPIES) >= _COPIES_MAX:
            _COPIES.clear()
        with torch.inference_mode(False), torch.no_grad():
            _COPIES[full] = build().to(device, dtype)
    return _COPIES[full]
