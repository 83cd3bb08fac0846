"""Peak memory of the tensors made inside a block, on any device.

CUDA has allocator statistics; the CPU has none, and a process's peak RSS also counts loading
the weights. ``TensorMemory`` watches every operation in the block and adds up the storage of
the tensors it makes while they are alive: the peak is what the computation itself holds on
top of what existed before (the weights, the inputs). Scratch buffers inside a kernel are not
seen. It also keeps the shapes of the largest tensors, to show which array sets the peak.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorMemory(TorchDispatchMode):
    """``with TensorMemory() as mem: ...`` → ``mem.peak_bytes``, ``mem.largest`` (shapes)
    and ``mem.shapes`` (every distinct shape made)."""

    def __init__(self, keep_largest: int = 5) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.shapes: set[tuple[int, ...]] = set()
        self.largest: list[tuple[int, tuple[int, ...], str]] = []  # (bytes, shape, dtype)
        self._keep = keep_largest
        self._alive: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        self.shapes.add(tuple(t.shape))
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._alive:
            return  # a view, or an in-place result: no new memory
        self._alive.add(key)
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self.largest = sorted(
            [*self.largest, (size, tuple(t.shape), str(t.dtype).replace("torch.", ""))],
            reverse=True,
        )[: self._keep]
        weakref.finalize(storage, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self._alive.discard(key)
        self.live_bytes -= size
