"""Where and in what precision the model runs: "auto" resolved, bad values refused early."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from fbseg.errors import ConfigError
from fbseg.pipeline.config import (
    AUTO_PRECISION,
    IMAGES_PER_CALL,
    IO_THREADS,
    MAX_WRITER_PROCESSES,
    READER_PROCESSES,
    WRITER_PROCESSES,
)

T = TypeVar("T")

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def for_device(table: dict[str, T], device: torch.device) -> T:
    """A per-device-type default from one of ``pipeline.config``'s tables; a device type the
    table does not name takes the CPU's."""
    return table.get(device.type, table["cpu"])


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX) through oneDNN, as
    PyTorch reports it; False where this PyTorch cannot tell."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(amx and torch.backends.mkldnn.is_available() and amx())
    except Exception:  # noqa: BLE001 - a probe that fails means no
        return False


def default_images_per_call(device: torch.device) -> int:
    """``--batch`` when not given (``IMAGES_PER_CALL``)."""
    return for_device(IMAGES_PER_CALL, device)


def default_io_threads(device: torch.device) -> int:
    """Decoder threads beside the model, and writer threads where writers are threads
    (``IO_THREADS``)."""
    return for_device(IO_THREADS, device)


def default_writer_process_count(device: torch.device) -> int:
    """Writer processes a folder run starts beside this device: one per core left after the
    model's thread and the decoder threads, the cores of a torchrun node shared among its
    ranks (at least ``IO_THREADS``, at most ``MAX_WRITER_PROCESSES``)."""
    threads = default_io_threads(device)
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    left = usable_cores() // ranks_here - 1 - threads
    return max(threads, min(MAX_WRITER_PROCESSES, left))


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_writer_processes(device: torch.device) -> bool:
    """Whether a folder run writes through processes beside this device (``WRITER_PROCESSES``)."""
    return for_device(WRITER_PROCESSES, device)


def default_reader_processes(device: torch.device) -> bool:
    """Whether a folder run decodes through processes beside this device (``READER_PROCESSES``)."""
    return for_device(READER_PROCESSES, device)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available")
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("device mps requested but MPS is not available")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``precision`` as a dtype; "auto" by device type (``AUTO_PRECISION``)."""
    if precision == "auto":
        return PRECISIONS[for_device(AUTO_PRECISION, device)]
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    return PRECISIONS[precision]


def to_host(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Host copies of ``tensors`` with one wait: on CUDA every copy is queued non-blocking into
    pinned memory and the stream is synchronised once (a plain ``.cpu()`` per tensor would
    stall the host on each); elsewhere ``.cpu()``."""
    if not tensors:
        return []
    device = tensors[0].device
    if device.type != "cuda":
        return [t.cpu().numpy() for t in tensors]
    copies = [t.to("cpu", non_blocking=True) for t in tensors]
    torch.cuda.current_stream(device).synchronize()
    return [c.numpy() for c in copies]
