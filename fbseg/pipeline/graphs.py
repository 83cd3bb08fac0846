"""Window-batch forwards replayed as CUDA graphs.

Beside a GPU a ProxyCLIP forward of 8 windows makes about 370 kernel launches one by one,
and the host making them, not the GPU, limits the model (on an H100: 8.7 ms of host work per
image against 0.6 ms waiting for the device). A CUDA graph records a forward's launches once
and replays them with one call. A forward's shapes are fixed by the window batch (its size
and crop size, the number of class names), so a run of like images needs a handful of them.

A graph reads its inputs from, and writes its output to, the memory it was recorded with:
each replay copies the crops and the text embeddings into those buffers and hands out a copy
of the output, so nothing a caller holds is overwritten by a later replay. The forward must
make no host synchronisation and build no CPU tensor (``tests/test_postprocess.py`` checks
every host on the meta device); what it caches on the device (position tables, constants)
is built by an ordinary run of the same shape before the first recording, and the recording
keeps every such tensor it reads alive (``ExternalInputs``), whatever the caches drop later.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

log = logging.getLogger("fbseg")

# Recorded forwards kept per segmenter; a batch shape beyond them runs as before. At the
# default protocol a run needs one crop size, whose windows left over after the full
# batches run in powers of two (``slide_many(few_shapes=True)``): 4 shapes at 8 windows per
# forward, 6 at 32, for each class list's number of names.
GRAPH_LIMIT = 16
# A recording's first replay on inputs other than those it was recorded with is checked
# against the forward run as it is: it is kept if at most this share of the output's entries
# differ by more than CHECK_ATOL (the outputs are cosine logits in [-1, 1]; the same kernels
# on the same inputs agree exactly, and a graph that read stale or freed memory would differ
# nearly everywhere).
CHECK_ATOL = 1e-2
CHECK_SHARE = 1e-3


@dataclass
class Recorded:
    """A recorded forward: ``replay()`` reruns it reading ``inputs`` and writing ``output``;
    ``kept`` holds the other tensors it reads (see ``ExternalInputs``)."""

    replay: Callable[[], None]
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor
    kept: tuple[torch.Tensor, ...] = ()
    checked: bool = False  # its first replay on new inputs agreed with the forward itself


class ExternalInputs(TorchDispatchMode):
    """Collects, while a forward is recorded, every tensor its operations read that none of
    them made: weights, and constants from caches that may drop them later (position tables,
    ``on_device`` copies). A graph reads them by address on every replay, so the recording
    keeps them alive for as long as it lives. What the forward makes itself is not kept: its
    memory belongs to the recording's pool."""

    def __init__(self) -> None:
        super().__init__()
        self._made: set[int] = set()
        self._read: dict[int, torch.Tensor] = {}

    @property
    def kept(self) -> tuple[torch.Tensor, ...]:
        return tuple(self._read.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for x in tree_leaves((args, kwargs)):
            if isinstance(x, torch.Tensor):
                storage = x.untyped_storage().data_ptr()
                if storage not in self._made:
                    self._read.setdefault(storage, x)
        out = func(*args, **kwargs)
        for x in tree_leaves(out):
            if isinstance(x, torch.Tensor):
                self._made.add(x.untyped_storage().data_ptr())
        return out


class Recorder(Protocol):
    """Records ``forward(*inputs)`` once; the result replays it on its own buffers."""

    def __call__(
        self, forward: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]
    ) -> Recorded: ...


class CudaGraphRecorder:
    """``torch.cuda.CUDAGraph`` recordings on one GPU, sharing one memory pool and one
    recording stream, each after one run of the forward on that stream (PyTorch's advice).

    Sharing is safe here: replays run one at a time on the caller's stream, and each output is
    copied before the next replay may reuse the memory another recording's output sits in.
    Recording and replaying happen with ``device`` made current, whichever GPU the calling
    thread has current. The capture mode is "thread_local", so decoder threads that pin host
    memory meanwhile are not taken for part of the recording."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        with torch.cuda.device(device):
            self.pool = torch.cuda.graph_pool_handle()
            self.stream = torch.cuda.Stream()

    def __call__(
        self, forward: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]
    ) -> Recorded:
        static = tuple(x.clone() for x in inputs)
        graph = torch.cuda.CUDAGraph()
        reads = ExternalInputs()
        with torch.cuda.device(self.device):
            # one run on the recording stream first: what a library sets up lazily for each
            # stream (cuBLAS workspaces and handles) is set up there, not amid the recording
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                forward(*static)
            torch.cuda.current_stream().wait_stream(self.stream)
            with torch.cuda.graph(
                graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"
            ):
                with reads:
                    output = forward(*static)

        def replay() -> None:
            with torch.cuda.device(self.device):
                graph.replay()

        return Recorded(replay, static, output, reads.kept)


_MISSING = object()


class GraphedForwards:
    """Runs ``forward(*inputs)`` through recordings keyed by what a recording fixes: the
    caller's ``key`` (the Python values the forward uses, e.g. FSA's λ) and each input's
    shape, dtype and device.

    The first time a key is seen the forward runs as it is (and builds what it caches); the
    second time it is recorded and replayed; the third time it is replayed and also run as
    it is, and the recording is kept only if the two agree (``CHECK_ATOL``); from then on it
    is replayed. A recording that fails (out of memory, an operation a graph cannot hold) or
    disagrees is logged once and its key runs as before. At most ``limit`` keys are recorded.
    """

    def __init__(self, recorder: Recorder | None = None, limit: int = GRAPH_LIMIT) -> None:
        self._recorder = recorder
        self.limit = limit
        self._recorded: dict[Hashable, Recorded | None] = {}  # None: its recording failed
        self._seen: set[Hashable] = set()
        self._lock = threading.Lock()  # one replay at a time: they share their buffers

    @property
    def recorded(self) -> int:
        """How many keys replay a recording."""
        return sum(r is not None for r in self._recorded.values())

    def clear(self) -> None:
        """Drop every recording (and the memory it holds), e.g. after running out of memory."""
        with self._lock:
            self._recorded.clear()
            self._seen.clear()
            if isinstance(self._recorder, CudaGraphRecorder):
                self._recorder = None  # a new pool: the old one goes with its recordings

    def run(
        self, key: Hashable, forward: Callable[..., torch.Tensor], *inputs: torch.Tensor
    ) -> torch.Tensor:
        """``forward(*inputs)``, replayed where recorded; the output is the caller's own."""
        full_key = (key, *((tuple(x.shape), x.dtype, x.device) for x in inputs))
        with self._lock:
            recorded = self._recorded.get(full_key, _MISSING)
            if recorded is _MISSING and self._may_record(full_key):
                recorded = self._record(full_key, forward, inputs)
                if recorded is not None:  # recorded from these very inputs: checked next time
                    return _replay(recorded, inputs)
            if recorded is None or recorded is _MISSING:  # not yet, or it failed: as before
                return forward(*inputs)
            out = _replay(recorded, inputs)
            if not recorded.checked:
                expected = forward(*inputs)
                if not _agrees(out, expected):
                    self._recorded[full_key] = None
                    return expected
                recorded.checked = True
            return out

    def _may_record(self, full_key: Hashable) -> bool:
        """Record a key on its second sight, while fewer than ``limit`` are recorded."""
        if full_key not in self._seen:
            self._seen.add(full_key)
            return False
        return len(self._recorded) < self.limit

    def _record(
        self, full_key: Hashable, forward: Callable[..., torch.Tensor], inputs: tuple
    ) -> Recorded | None:
        if self._recorder is None:
            self._recorder = CudaGraphRecorder(inputs[0].device)
        collecting = gc.isenabled()
        gc.disable()  # no finalizers (freeing pinned host memory, say) amid the recording
        try:
            recorded = self._recorder(forward, inputs)
        except Exception as exc:  # noqa: BLE001 - any failure: this key runs as before
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("CUDA graph not recorded (%s); this batch shape runs without one", reason)
            recorded = None
        finally:
            if collecting:
                gc.enable()
        self._recorded[full_key] = recorded
        return recorded


def _replay(recorded: Recorded, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Copy ``inputs`` into the recording's buffers, replay it, and copy its output out."""
    for static, x in zip(recorded.inputs, inputs):
        static.copy_(x)
    recorded.replay()
    return recorded.output.clone()


def _agrees(replayed: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether a replay's output matches the forward's own (one wait for the device, once per
    recording); a mismatch is logged."""
    differ = ~torch.isclose(replayed, expected, rtol=0.0, atol=CHECK_ATOL, equal_nan=True)
    share = differ.float().mean().item()
    if share > CHECK_SHARE:
        log.warning(
            "a CUDA graph's replay differs from its forward on %.1f%% of the outputs; "
            "this batch shape runs without one",
            100 * share,
        )
        return False
    return True
