"""Window-batch forwards replayed from recordings (CUDA graphs beside a GPU).

A CUDA graph cannot be recorded without a GPU, so these tests record with ``ReplayOnBuffers``,
which keeps what makes a graph a graph: a replay reads the buffers the recording was made
with and writes its output into the same tensor every time. Whatever ``GraphedForwards`` and
the Segmenter must do around that (copy the inputs in, hand out a copy, key the recordings,
fall back) is checked here; that the forward itself records on CUDA is checked by the GPU
run of benchmarks/bench_throughput.py.
"""

from __future__ import annotations

import gc
import logging

import numpy as np
import pytest
import torch

from fbseg.errors import ConfigError
from fbseg.pipeline.config import DEFAULTS
from fbseg.pipeline.graphs import ExternalInputs, GraphedForwards, Recorded

from conftest import random_image
from helpers import tiny_segmenter, with_text


class ReplayOnBuffers:
    """A recorder with a CUDA graph's buffer semantics, on any device."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.recordings = 0
        self.replays = 0

    def __call__(self, forward, inputs):
        self.recordings += 1
        if self.fail:
            raise RuntimeError(
                "operation not permitted when stream is capturing\n"
                "CUDA kernel errors might be asynchronously reported at some other API call"
            )
        static = tuple(x.clone() for x in inputs)
        output = forward(*static)

        def replay() -> None:
            self.replays += 1
            output.copy_(forward(*static))

        return Recorded(replay, static, output)


def doubled_plus(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 2 * x + y.sum()


def test_a_key_runs_as_is_then_is_recorded_then_replayed():
    recorder = ReplayOnBuffers()
    graphs = GraphedForwards(recorder)
    x, y = torch.arange(4.0), torch.ones(3)
    for call in range(4):
        out = graphs.run("k", doubled_plus, x + call, y)
        torch.testing.assert_close(out, 2 * (x + call) + 3, rtol=0, atol=0)
    assert recorder.recordings == 1  # on the second call, once
    assert recorder.replays == 3  # second, third and fourth calls
    assert graphs.recorded == 1


class BakedInputs(ReplayOnBuffers):
    """A broken recording: its replays compute from the inputs it was recorded with, not
    from its buffers (as a graph that read them from elsewhere would)."""

    def __call__(self, forward, inputs):
        recorded = super().__call__(forward, inputs)
        baked = tuple(x.clone() for x in inputs)

        def replay() -> None:
            self.replays += 1
            recorded.output.copy_(forward(*baked))

        return Recorded(replay, recorded.inputs, recorded.output)


class CountedForward:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return doubled_plus(x, y)


def test_the_first_replay_on_new_inputs_is_checked_once():
    forward = CountedForward()
    recorder = ReplayOnBuffers()
    graphs = GraphedForwards(recorder)
    y = torch.zeros(1)
    for call in range(6):
        graphs.run("k", forward, torch.full((2,), float(call)), y)
    assert recorder.recordings == 1 and recorder.replays == 5
    # the forward as it is (the emulated recording and replays run it too): the first
    # sight and the check beside the first replay on new inputs
    assert forward.calls - recorder.recordings - recorder.replays == 2


def test_a_replay_that_disagrees_with_its_forward_is_dropped(caplog):
    recorder = BakedInputs()
    graphs = GraphedForwards(recorder)
    y = torch.zeros(1)
    with caplog.at_level(logging.WARNING, logger="fbseg"):
        outs = [graphs.run("k", doubled_plus, torch.full((2,), float(c)), y) for c in range(5)]
    assert [o.tolist() for o in outs] == [[2.0 * c] * 2 for c in range(5)]
    assert graphs.recorded == 0 and recorder.recordings == 1
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(warnings) == 1 and "differs from its forward on 100.0%" in warnings[0]


def test_a_replayed_output_is_the_callers_own():
    """A later replay writes into the recording's output: what an earlier call returned
    must not change with it."""
    graphs = GraphedForwards(ReplayOnBuffers())
    y = torch.zeros(1)
    graphs.run("k", doubled_plus, torch.zeros(3), y)  # seen
    first = graphs.run("k", doubled_plus, torch.ones(3), y)  # recorded and replayed
    second = graphs.run("k", doubled_plus, torch.full((3,), 5.0), y)
    assert first.tolist() == [2.0, 2.0, 2.0]
    assert second.tolist() == [10.0, 10.0, 10.0]


def test_every_input_is_copied_in_before_a_replay():
    """The text embeddings change with the class list while the batch shape does not."""
    graphs = GraphedForwards(ReplayOnBuffers())
    x = torch.zeros(2)
    for total in (1.0, 1.0, 7.0, -2.0):
        out = graphs.run("k", doubled_plus, x, torch.tensor([total]))
        assert out.tolist() == [total, total]


def test_keys_shapes_and_dtypes_get_their_own_recordings_up_to_the_limit():
    recorder = ReplayOnBuffers()
    graphs = GraphedForwards(recorder, limit=3)
    y = torch.zeros(1)
    calls = [
        ("a", torch.ones(2)),
        ("b", torch.ones(2)),  # another key
        ("a", torch.ones(3)),  # another shape
        ("a", torch.ones(2, dtype=torch.float64)),  # another dtype
    ]
    for _ in range(3):
        for key, x in calls:
            out = graphs.run(key, doubled_plus, x, y)
            assert out.shape == x.shape and out.dtype == x.dtype
            assert out.tolist() == (2 * x).tolist()
    assert graphs.recorded == 3  # the fourth runs as it is
    assert recorder.recordings == 3


def test_a_failed_recording_is_reported_once_and_its_key_runs_as_is(caplog):
    recorder = ReplayOnBuffers(fail=True)
    graphs = GraphedForwards(recorder)
    x, y = torch.ones(2), torch.zeros(1)
    with caplog.at_level(logging.WARNING, logger="fbseg"):
        outs = [graphs.run("k", doubled_plus, x, y) for _ in range(5)]
    assert all(o.tolist() == [2.0, 2.0] for o in outs)
    assert recorder.recordings == 1
    assert graphs.recorded == 0
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(warnings) == 1 and "not permitted when stream is capturing)" in warnings[0]
    assert "\n" not in warnings[0]  # the reason's first line only


@pytest.mark.parametrize("fail", [False, True])
def test_no_garbage_collection_while_recording(fail):
    """A collection amid a recording could run finalizers that touch the device; it is off
    while recording and back on after, whether the recording worked or not."""
    seen = []

    class Watching(ReplayOnBuffers):
        def __call__(self, forward, inputs):
            seen.append(gc.isenabled())
            return super().__call__(forward, inputs)

    graphs = GraphedForwards(Watching(fail=fail))
    assert gc.isenabled()
    for _ in range(2):
        graphs.run("k", doubled_plus, torch.ones(2), torch.zeros(1))
    assert seen == [False] and gc.isenabled()


def test_clear_drops_the_recordings():
    recorder = ReplayOnBuffers()
    graphs = GraphedForwards(recorder)
    x, y = torch.ones(2), torch.zeros(1)
    for _ in range(2):
        graphs.run("k", doubled_plus, x, y)
    graphs.clear()
    assert graphs.recorded == 0
    graphs.run("k", doubled_plus, x, y)  # seen again: as it is
    assert recorder.recordings == 1
    graphs.run("k", doubled_plus, x, y)
    assert recorder.recordings == 2


NAMES = ["cat", "sofa; couch", "floor"]
OTHER_NAMES = ["dog", "tree; bush", "sky"]  # as many names: the same batch shapes


def _segmenter(tiny_clip, host):
    protocol = DEFAULTS.replace(short_side=64, window=64, stride=32)
    seg = tiny_segmenter(tiny_clip, NAMES, host=host, config=protocol, windows_per_forward=2)
    with_text(seg, OTHER_NAMES, 32, seed=9)
    return seg


@pytest.fixture(params=["naclip", "proxyclip"])
def host(request, dino_ckpt):
    if request.param == "naclip":
        return "naclip"
    from fbseg.hosts import HOSTS
    from fbseg.hosts.base import HostOptions

    return HOSTS.get("proxyclip").build(HostOptions(proxy="dino", proxy_checkpoint=dino_ckpt))


def test_a_segmenter_replaying_its_forwards_gives_the_same_results(tiny_clip, host):
    """Three calls of two images each (two 64² windows per image, two per forward: every
    call makes two forwards of one shape) with two class lists of as many names: the first
    forward runs as is, the second is recorded, later ones replay; every result equals the
    Segmenter's without recordings, including with ``compare``."""
    seg = _segmenter(tiny_clip, host)
    calls = [
        ([random_image(64, 96, seed=s), random_image(96, 64, seed=s + 1)], classes, compare)
        for s, classes, compare in [
            (0, NAMES, False),
            (2, OTHER_NAMES, False),
            (4, NAMES, True),
            (6, OTHER_NAMES, False),
        ]
    ]
    expected = [seg.segment_batch(images, cl, compare=cmp) for images, cl, cmp in calls]
    recorder = ReplayOnBuffers()
    seg.graphs = GraphedForwards(recorder)
    got = [seg.segment_batch(images, cl, compare=cmp) for images, cl, cmp in calls]
    for want_call, got_call in zip(expected, got):
        for want, ours in zip(want_call, got_call):
            np.testing.assert_array_equal(ours.labels, want.labels)
            np.testing.assert_array_equal(ours.class_stats, want.class_stats)
            np.testing.assert_array_equal(ours.probs, want.probs)
            if want.baseline_labels is not None:
                np.testing.assert_array_equal(ours.baseline_labels, want.baseline_labels)
    assert recorder.recordings == 2  # one per key: (λ, window, compare off) and compare on
    assert recorder.replays == 2 * 4 - 2  # every forward but each key's first sight


def test_replayed_forwards_run_what_is_left_in_powers_of_two(tiny_clip, monkeypatch):
    """Seven windows of one size, four per forward: with recordings the batches are 4, 2 and
    1 (a number of windows left over runs in shapes a later call meets again), without them
    4 and 3; the results agree."""
    from fbseg.pipeline import segmenter as segmenter_module

    seg = _segmenter(tiny_clip, "naclip")
    seg.windows_per_forward = 4
    images = [random_image(64, 96, seed=s) for s in range(3)] + [random_image(64, 64, seed=3)]
    expected = seg.segment_batch(images, NAMES)
    sizes: list[int] = []
    plain = segmenter_module.crop_logits

    def counted(model, crops, *args, **kwargs):
        sizes.append(crops.shape[0])
        return plain(model, crops, *args, **kwargs)

    monkeypatch.setattr(segmenter_module, "crop_logits", counted)
    seg.segment_batch(images, NAMES)
    assert sizes == [4, 3]
    recorder = ReplayOnBuffers()
    seg.graphs = GraphedForwards(recorder)
    sizes.clear()
    for _ in range(3):  # first sight, recording, replay
        got = seg.segment_batch(images, NAMES)
    assert recorder.recordings == 3 and recorder.replays == 3 + 3  # 3 checked against forwards
    assert sizes[:3] == [4, 2, 1]
    for want, ours in zip(expected, got):  # other batch sizes: float rounding only
        np.testing.assert_array_equal(ours.labels, want.labels)
        np.testing.assert_allclose(ours.probs, want.probs, rtol=0, atol=1e-5)


def test_running_out_of_memory_drops_the_recordings(tiny_clip):
    seg = _segmenter(tiny_clip, "naclip")
    seg.graphs = GraphedForwards(ReplayOnBuffers())
    images = [random_image(64, 96, seed=0)]
    for _ in range(2):
        seg.segment_batch(images, NAMES)
    assert seg.graphs.recorded == 1
    seg._shrink_window_batch(1)
    assert seg.graphs.recorded == 0 and seg.windows_per_forward == 1


def test_cuda_graphs_are_refused_on_other_devices(tiny_clip):
    with pytest.raises(ConfigError, match="CUDA graphs need a CUDA device, not cpu"):
        tiny_segmenter(tiny_clip, NAMES, cuda_graphs=True)
    assert tiny_segmenter(tiny_clip, NAMES).graphs is None  # the default (CUDA_GRAPHS off)
    assert tiny_segmenter(tiny_clip, NAMES, cuda_graphs=False).graphs is None


def test_a_recording_keeps_what_it_reads_and_did_not_make():
    """A graph reads cached constants by address: the recording must hold them, not the
    cache, which may drop them. What the forward makes itself is not held."""
    cache = {"scale": torch.full((3,), 2.0)}
    weight = torch.ones(3)
    made = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = x * cache["scale"][:, None][:, 0]  # a view of the constant
        made.append(h)
        return h + weight

    x = torch.arange(3.0)
    reads = ExternalInputs()
    with reads:
        out = forward(x)
    torch.testing.assert_close(out, forward(x), rtol=0, atol=0)
    kept = {t.untyped_storage().data_ptr() for t in reads.kept}
    for tensor in (x, cache["scale"], weight):
        assert tensor.untyped_storage().data_ptr() in kept
    assert made[0].untyped_storage().data_ptr() not in kept


def test_a_forward_keeps_every_cached_constant_it_reads(tiny_clip, host):
    """Run as it would be recorded, a window batch's forward gives the same logits and holds
    every constant the caches built for it (emptied first, then filled by a first run)."""
    from fbseg.models import constants
    from fbseg.models.pos_embed import _CACHE_ATTR
    from fbseg.pipeline.crop import crop_logits

    seg = _segmenter(tiny_clip, host)
    modules = [seg.visual, getattr(seg.host, "proxy", seg.visual)]
    constants._COPIES.clear()
    for module in modules:
        module.__dict__.pop(_CACHE_ATTR, None)
    crops = torch.randn(2, 3, 64, 64)
    text = seg.encode_text(NAMES)

    def forward(c, t):
        return crop_logits(seg.crop_model, c, t, feedback=True, lam=3.0, window=64)

    with torch.inference_mode():
        expected = forward(crops, text)
        reads = ExternalInputs()
        with reads:
            got = forward(crops, text)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    cached = list(constants._COPIES.values())
    cached += [t for m in modules for t in m.__dict__.get(_CACHE_ATTR, {}).values()]
    assert cached  # the hosts do read cached constants
    kept = {t.untyped_storage().data_ptr() for t in reads.kept}
    assert all(t.untyped_storage().data_ptr() in kept for t in cached)
