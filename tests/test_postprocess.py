"""Post-processing on the device and what crosses to the host: class statistics, compact
labels, one wait per batch, probabilities computed on access, results not kept by long runs,
and no CPU tensor inside a forward once it has run."""

import gc
import threading
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fbseg.classes import parse_classes
from fbseg.hosts import HOSTS, build_host
from fbseg.pipeline import postprocess
from fbseg.pipeline.config import DEFAULTS, Refinement
from fbseg.pipeline.crop import CropModel, crop_logits
from fbseg.pipeline.postprocess import (
    class_statistics,
    compact_labels,
    device_result,
    label_counts,
    labels_from_probs,
    probabilities_and_labels,
)
from fbseg.pipeline.window import slide_many
from fbseg.result import SegmentationResult
from fbseg.runs.folder import segment_folder
from fbseg.runs.outputs import OutputOptions

from conftest import random_image
from helpers import bad_folder, tiny_segmenter, with_text


def naive_stats(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Pixel count, mean probability over the class's pixels, max probability: one class at a
    time with boolean masks."""
    K = probs.shape[0]
    out = np.zeros((3, K))
    for k in range(K):
        mask = labels == k
        out[0, k] = mask.sum()
        out[1, k] = probs[k][mask].astype(np.float64).mean() if mask.any() else 0.0
        out[2, k] = probs[k].max()
    return out


def test_class_statistics_equal_a_per_class_loop():
    probs = torch.softmax(torch.randn(5, 37, 41) * 3, dim=0)
    labels = labels_from_probs(probs, 0.5)  # thresholded: class 0 holds pixels it does not top
    labels[labels == 3] = 4  # and class 3 has no pixel at all
    stats = class_statistics(probs, labels).numpy()
    expected = naive_stats(labels.numpy(), probs.numpy())
    assert expected[0, 3] == 0 and expected[0, 0] > 0
    np.testing.assert_allclose(stats, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(
        label_counts(labels, 5).numpy(), np.bincount(labels.numpy().ravel(), minlength=5)
    )


@pytest.mark.parametrize(
    ("K", "dtype"), [(21, torch.uint8), (256, torch.uint8), (300, torch.int16)]
)
def test_compact_labels_keep_every_value(K, dtype):
    labels = torch.randint(0, K, (17, 19))
    labels[0, 0] = K - 1
    small = compact_labels(labels, K)
    assert small.dtype == dtype
    np.testing.assert_array_equal(small.numpy().astype(np.int64), labels.numpy())


def naclip(tiny_clip, **config):
    """The tiny NACLIP Segmenter at 64-pixel windows with ``config`` and four names."""
    protocol = DEFAULTS.replace(short_side=64, window=64, stride=32, **config)
    return tiny_segmenter(tiny_clip, ["cat", "sofa", "couch", "floor"], config=protocol)


@pytest.mark.parametrize("settings", [{}, {"prob_threshold": 0.6}, {"refine": Refinement.PAMR}])
def test_summary_from_the_device_equals_one_from_the_arrays(tiny_clip, settings):
    seg = naclip(tiny_clip, **settings)
    result = seg.segment(random_image(90, 130, seed=2), "cat,sofa; couch,floor")
    expected = naive_stats(result.labels, result.probs)
    np.testing.assert_allclose(result.class_stats, expected, rtol=1e-9, atol=1e-12)
    for s, pixels, mean, top in zip(result.summary(), *expected):
        assert s.pixel_fraction == pytest.approx(pixels / result.labels.size, abs=1e-12)
        assert (s.mean_confidence, s.max_confidence) == pytest.approx((mean, top), abs=1e-9)
    assert result.labels.dtype == np.int64 and result.labels.shape == (90, 130)


def test_statistics_of_a_batch_are_each_images_own():
    """Images of different sizes share one scatter (bins i·K + label): each image's rows
    still equal a per-class loop over that image alone."""
    from fbseg.pipeline.postprocess import label_probabilities, statistics_of_images

    g = torch.Generator().manual_seed(4)
    images = [
        torch.softmax(torch.randn(4, h, w, generator=g) * 3, 0)
        for h, w in [(9, 7), (3, 11), (6, 6)]
    ]
    labels = [labels_from_probs(p, 0.4) for p in images]
    labels[1][:] = 2  # an image with one class only
    parts = [label_probabilities(p, x) for p, x in zip(images, labels)]
    stats = statistics_of_images(labels, [a for a, _ in parts], [b for _, b in parts]).numpy()
    assert stats.shape == (3, 3, 4)
    for p, x, got in zip(images, labels, stats):
        np.testing.assert_allclose(got, naive_stats(x.numpy(), p.numpy()), rtol=1e-9, atol=1e-12)


def test_a_batch_crosses_to_the_host_once(tiny_clip, monkeypatch):
    seg = naclip(tiny_clip)
    calls = []
    real = postprocess.to_host

    def spy(tensors):
        calls.append([t.dtype for t in tensors])
        return real(tensors)

    monkeypatch.setattr(postprocess, "to_host", spy)
    images = [random_image(70 + 10 * i, 100, seed=i) for i in range(3)]
    results = seg.segment_batch(images, "cat,sofa; couch,floor", compare=True)
    # one transfer: the labels and host-only labels of the three images as one uint8 tensor,
    # and their statistics
    assert calls == [[torch.uint8, torch.float64]]
    assert all(r.baseline_labels.dtype == np.int64 for r in results)
    for image, result in zip(images, results):  # each image's own, however they crossed
        alone = seg.segment(image, "cat,sofa; couch,floor", compare=True)
        np.testing.assert_array_equal(result.labels, alone.labels)
        np.testing.assert_array_equal(result.baseline_labels, alone.baseline_labels)
        expected = naive_stats(result.labels, result.probs)
        np.testing.assert_allclose(result.class_stats, expected, rtol=1e-9, atol=1e-12)


def test_results_keep_labels_narrow_until_read(tiny_clip, monkeypatch):
    """An engine hands labels over in one byte per pixel; ``labels`` is int64, the same
    values, made once on first read; reading the summary, the digest or the compact labels
    (all a folder run does) never widens them."""
    import pickle

    from fbseg.result import SegmentationResult

    widened = []
    real = SegmentationResult._in_type

    def spy(self, key, labels, dtype):
        if dtype == np.int64 and labels.dtype != dtype:
            widened.append(key)
        return real(self, key, labels, dtype)

    monkeypatch.setattr(SegmentationResult, "_in_type", spy)
    seg = naclip(tiny_clip)
    result = seg.segment_batch([random_image(70, 90, seed=5)], "cat,sofa; couch,floor")[0]
    compact = result.compact_labels
    assert compact.dtype == np.uint8 and compact.shape == (70, 90)
    result.digest(), result.to_json(), pickle.dumps(result)
    assert widened == []
    wide = result.labels
    assert wide.dtype == np.int64 and result.labels is wide  # made once
    np.testing.assert_array_equal(wide, compact)
    copy = pickle.loads(pickle.dumps(result))
    assert copy.compact_labels.dtype == np.uint8
    np.testing.assert_array_equal(copy.labels, wide)
    assert copy.labels.dtype == np.int64


@pytest.mark.parametrize(("K", "narrow"), [(2, np.uint8), (256, np.uint8), (300, np.uint16)])
def test_labels_given_in_any_integer_type_read_back_alike(K, narrow):
    from fbseg.result import SegmentationResult

    g = np.random.default_rng(K)
    values = g.integers(0, K, (5, 6))
    values[0, 0] = K - 1
    names = tuple((f"c{k}",) for k in range(K))
    for given in (values, values.astype(np.int16)):
        result = SegmentationResult(
            given, np.zeros((K, 5, 6), np.float32), tuple(f"c{k}" for k in range(K)), names
        )
        assert result.labels.dtype == np.int64 and result.compact_labels.dtype == narrow
        assert result.compact_labels is result.compact_labels  # converted once, if at all
        np.testing.assert_array_equal(result.labels, values)
        np.testing.assert_array_equal(result.compact_labels, values)


def _read_in_threads(read, count: int = 4) -> None:
    """``read`` called from ``count`` threads at once."""
    threads = [threading.Thread(target=read) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_probs_are_computed_once_on_first_access():
    made = []

    def compute() -> np.ndarray:
        made.append(1)
        return np.full((2, 3, 4), 0.5, dtype=np.float32)

    r = SegmentationResult(np.zeros((3, 4), np.int64), compute, ("a", "b"), (("a",), ("b",)))
    assert made == []
    _read_in_threads(lambda: r.probs)
    assert made == [1] and r.probs is r.probs
    assert r.summary()[0].mean_confidence == 0.5 and r.summary()[1].pixel_fraction == 0.0


def test_float16_probabilities_come_from_the_engine_until_probs_is_formed():
    """``probs_float16`` is formed by the engine's function (on its device) while the float32
    map is not formed, once whatever the threads; once ``probs`` is formed it is rounded from
    that, and the engine's functions (holding device memory) are let go."""
    values = np.random.default_rng(0).random((2, 3, 4), dtype=np.float32)
    made = []

    def compute() -> np.ndarray:
        made.append(32)
        return values

    def compute16() -> np.ndarray:
        made.append(16)
        return values.astype(np.float16)

    r = SegmentationResult(
        np.zeros((3, 4), np.int64), compute, ("a", "b"), (("a",), ("b",)), probs_float16=compute16
    )
    _read_in_threads(lambda: r.probs_float16)
    assert made == [16] and r.probs_float16 is r.probs_float16
    r.probs  # noqa: B018
    assert made == [16, 32] and r.probs_float16.dtype == np.float16
    made.clear()

    class Rounder:  # holds device memory in an engine's result
        def __call__(self) -> np.ndarray:
            return compute16()

    rounder = Rounder()
    held = weakref.ref(rounder)
    r = SegmentationResult(
        np.zeros((3, 4), np.int64), compute, ("a", "b"), (("a",), ("b",)), probs_float16=rounder
    )
    del rounder
    r.probs  # noqa: B018
    gc.collect()
    assert held() is None  # let go once probs is formed
    half = r.probs_float16
    assert made == [32]
    np.testing.assert_array_equal(half.view(np.uint16), values.astype(np.float16).view(np.uint16))
    plain = SegmentationResult(np.zeros((3, 4), np.int64), values, ("a", "b"), (("a",), ("b",)))
    assert plain.probs_float16.dtype == np.float16


def _float16_rounding_cases() -> np.ndarray:
    """float32 values where rounding to float16 is decided, both signs: every float16 value
    (subnormals included), the midpoint between each two neighbours (a tie, to even) and the
    float32 values either side of it, the overflow tie 65520 and its neighbours, infinity; and
    probabilities drawn at random."""
    steps = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    ties = (steps[:-1] + steps[1:]) / 2  # exact in float32: a float16 has 11 significant bits
    ties = np.append(ties, 65520.0).astype(np.float32)
    below = np.nextafter(ties, np.float32(0))
    above = np.nextafter(ties, np.float32(np.inf))
    random = np.random.default_rng(0).random(100_000, dtype=np.float32)
    positive = np.concatenate([steps.astype(np.float32), ties, below, above, random, [np.inf]])
    return np.concatenate([positive, -positive]).astype(np.float32)


def test_probabilities_rounded_on_the_device_as_numpy_rounds_them():
    """``lazy_probs(…, float16)`` rounds with torch on the map's device; the files it feeds
    were written from numpy's ``astype`` before, and a resumed run compares them byte for
    byte: every case where the rounding is decided gives numpy's bits."""
    values = _float16_rounding_cases()
    half = postprocess.lazy_probs(lambda: torch.from_numpy(values), torch.float16)()
    assert half.dtype == np.float16
    with np.errstate(over="ignore"):  # 65520 and above round to infinity, as they should
        expected = values.astype(np.float16)
    np.testing.assert_array_equal(half.view(np.uint16), expected.view(np.uint16))
    single = postprocess.lazy_probs(lambda: torch.from_numpy(values).half())()
    assert single.dtype == np.float32


@pytest.mark.parametrize("settings", [{}, {"refine": Refinement.PAMR, "prob_threshold": 0.3}])
def test_probs_formed_again_when_read_equal_the_kept_ones(tiny_clip, monkeypatch, settings):
    """On an accelerator a result lets its probabilities go and forms them again from the
    stitched logits when read: the same values as the ones the labels were taken from (the
    CPU keeps those, so it serves as the reference here)."""
    seg = naclip(tiny_clip, **settings)
    images = [random_image(80, 120, seed=4), random_image(70, 90, seed=5)]
    kept = seg.segment_batch(images, "cat,sofa; couch,floor", compare=True)
    monkeypatch.setattr(postprocess, "keeps_probs", lambda device: False)
    formed = seg.segment_batch(images, "cat,sofa; couch,floor", compare=True)
    again = seg.segment_batch(images, "cat,sofa; couch,floor", compare=True)
    for a, b, c in zip(kept, formed, again):
        np.testing.assert_array_equal(c.probs_float16.view(np.uint16), _rounded(a.probs))
        np.testing.assert_array_equal(b.probs_float16.view(np.uint16), _rounded(a.probs))
        np.testing.assert_array_equal(a.probs_float16.view(np.uint16), _rounded(a.probs))
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.class_stats, b.class_stats)


def _rounded(probs: np.ndarray) -> np.ndarray:
    """``probs`` rounded to float16 by numpy, as bits."""
    return probs.astype(np.float16).view(np.uint16)


def test_a_folder_run_keeps_digests_not_arrays(tmp_path, tiny_clip):
    seg = naclip(tiny_clip)
    bad_folder(tmp_path / "in")
    classes = parse_classes("cat,floor")
    seen = []

    def on_outcome(outcome):
        if outcome.result is not None:
            seen.append(weakref.ref(outcome.result))

    opts = OutputOptions(out_dir=tmp_path / "out", class_labels=classes.labels)
    run = segment_folder(seg, [str(tmp_path / "in")], classes, opts, on_outcome=on_outcome)
    gc.collect()
    assert len(seen) == run.done_here > 0
    assert all(ref() is None for ref in seen)  # no array outlives its files
    done = [o for o in run.outcomes if o.digest is not None]
    assert len(done) == len(seen) and all(o.result is None for o in run.outcomes)
    assert [c.label for c in done[0].digest.classes] == ["cat", "floor"]


class CpuTensorWatch(TorchDispatchMode):
    """Records every operation that reads or makes a CPU tensor. On a GPU each would be a
    host computation or a copy that makes the host wait for the device — except a queued
    upload: a tensor made on the host and copied to the device without blocking, once.
    Those are counted apart (``uploads``)."""

    UPLOADS = (torch.ops.aten.to, torch.ops.aten._to_copy)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.uploads = 0
        self._made_on_host: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten.lift_fresh.default and out.device.type == "cpu":
            self._made_on_host.append(out)  # fine only if it is uploaded next
            return out
        if func.overloadpacket in self.UPLOADS and self._is_queued_upload(args[0], out, kwargs):
            self.uploads += 1
            self._made_on_host = [t for t in self._made_on_host if t is not args[0]]
            return out
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors):
            self.seen.append(str(func))
        return out

    @staticmethod
    def _is_queued_upload(source, out, kwargs) -> bool:
        return (
            source.device.type == "cpu"
            and out.device.type != "cpu"
            and kwargs.get("non_blocking", False)
        )

    def made_but_not_uploaded(self) -> int:
        return len(self._made_on_host)


HOSTS_ON_META = HOSTS.names()  # every registered host (ProxyCLIP with DINO)
PROXIES_ON_META = ["dinov2", "sam", "mae"]  # the other proxy families


@pytest.mark.parametrize("proxy_name", PROXIES_ON_META)
def test_a_forward_with_any_proxy_makes_no_cpu_tensor_once_warm(proxy_name, tiny_clip):
    """As ``test_a_forward_makes_no_cpu_tensor_once_warm``, for ProxyCLIP with a random proxy of each other family built on the meta
    device: DINOv2's registers, SAM's position lookups and banded global attention, MAE's
    resize to the window."""
    import timm

    from fbseg.hosts.proxyclip import ProxyCLIP
    from fbseg.models.proxies import PROXIES

    spec = PROXIES.get(proxy_name)
    with torch.device("meta"):
        proxy = timm.create_model(spec.timm_name, pretrained=False)
    _forward_makes_no_cpu_tensor(ProxyCLIP(proxy, spec), tiny_clip)


@pytest.mark.parametrize("host_name", HOSTS_ON_META)
def test_a_forward_makes_no_cpu_tensor_once_warm(host_name, tiny_clip, dino_ckpt):
    """On the meta device (no data, any device but the CPU would do), after a first call —
    which builds and keeps constants such as NACLIP's Gaussian on the device — a window
    batch, its stitching and the post-processing touch no CPU tensor, but for one queued
    upload of the window counts per call."""
    from fbseg.hosts.base import HostOptions

    host = (
        HOSTS.get("proxyclip").build(HostOptions(proxy="dino", proxy_checkpoint=dino_ckpt))
        if host_name == "proxyclip"
        else build_host(host_name)
    )
    _forward_makes_no_cpu_tensor(host, tiny_clip)


def _forward_makes_no_cpu_tensor(host, tiny_clip) -> None:
    import copy

    model = CropModel(copy.deepcopy(tiny_clip.visual).to("meta"), host.to("meta", torch.float32))
    text = torch.zeros(4, 32, device="meta")
    cfg = DEFAULTS.replace(prob_threshold=0.3, area_threshold=0.1, renormalize=True)

    def run_once():
        images = [torch.zeros(3, 70, 100, device="meta"), torch.zeros(3, 64, 64, device="meta")]
        logits = slide_many(
            images,
            lambda crops: crop_logits(model, crops, text, feedback=True, lam=3.0, window=64),
            window=64,
            stride=32,
            pad_multiple=host.pad_multiple or 16,
        )
        for image, one in zip(images, logits):
            probs, labels = probabilities_and_labels(one, (90, 120), cfg, [0, 1, 1, 2], image)
            device_result(probs, labels, lambda p=probs: p)

    with torch.inference_mode():
        run_once()
        watch = CpuTensorWatch()
        with watch:
            run_once()
    assert watch.seen == []
    assert watch.uploads == 1 and watch.made_but_not_uploaded() == 0


def test_the_same_names_reuse_their_device_copy(tiny_clip):
    """Every call of a run asks for the same names: their embeddings are stacked and copied to
    the device once, and again only when an embedding changes."""
    seg = naclip(tiny_clip)
    first = seg.encode_text("cat,sofa; couch,floor")
    assert seg.encode_text("cat,sofa; couch,floor") is first
    assert seg.encode_text("cat,floor") is not first
    with_text(seg, ["cat", "sofa", "couch", "floor"], 32, seed=9)  # new embeddings
    again = seg.encode_text("cat,sofa; couch,floor")
    assert again is not first and not torch.equal(again, first)


@pytest.mark.parametrize(
    "name_to_class",
    [[0, 1, 1, 2, 2, 2, 3, 4, 4], [2, 0, 1, 0, 2, 2], [0, 1, 2]],
    ids=["grouped", "interleaved", "one-each"],
)
def test_class_maximum_matches_a_loop_over_classes(name_to_class):
    """Classes with equal name counts are taken together; each class still gets the
    maximum over exactly its own names (a plain loop here)."""
    from fbseg.pipeline.postprocess import class_maximum

    per_name = torch.rand(len(name_to_class), 5, 7, generator=torch.Generator().manual_seed(2))
    K = max(name_to_class) + 1
    expected = torch.stack(
        [
            torch.stack([per_name[i] for i, c in enumerate(name_to_class) if c == k]).max(0).values
            for k in range(K)
        ]
    )
    assert torch.equal(class_maximum(per_name, name_to_class), expected)


def _naive_post(logits, size, cfg, name_to_class):
    """One image's probabilities (K, H, W) and labels (H, W), step by step: resize, ×scale,
    softmax, max over each class's names (``naive.probs_from_logits``), SCLIP's area
    threshold counted with one mask per class, argmax and threshold, renormalisation."""
    import naive

    up = torch.nn.functional.interpolate(logits[None], size=size, mode="bilinear")[0]
    probs = naive.probs_from_logits(up, cfg.logit_scale, name_to_class)
    K = probs.shape[0]
    if cfg.area_threshold is not None:
        winner = probs.argmax(0)
        areas = [float((winner == k).sum()) for k in range(1, K)]
        for k, area in zip(range(1, K), areas):
            if not area > cfg.area_threshold * sum(areas):
                probs[k] = 0.0
    top, labels = probs.max(0)
    labels[top < cfg.prob_threshold] = 0
    if cfg.renormalize:
        probs = probs / probs.sum(0, keepdim=True)
    return probs, labels


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"prob_threshold": 0.5},
        {"area_threshold": 0.2, "logit_scale": 8.0},
        {"renormalize": True, "prob_threshold": 0.3},
    ],
    ids=["plain", "threshold", "area", "renormalize"],
)
@pytest.mark.parametrize("pass_bytes", [0, 2 * 5 * 40 * 50 * 4, 2**30], ids=["1", "2", "all"])
def test_images_side_by_side_are_each_post_processed_as_alone(settings, pass_bytes):
    """A call's images post-processed in passes of one, about two, or all of them (laid in
    one row) get each image's own probabilities, labels and statistics: equal to a naive
    chain over that image alone, SCLIP's area threshold included (each image's own areas)."""
    from fbseg.pipeline.postprocess import device_results, results_from_device

    name_to_class = [0, 1, 1, 2, 3, 3]
    cfg = DEFAULTS.replace(**settings)
    g = torch.Generator().manual_seed(11)
    sizes = [(40, 50), (31, 57), (45, 38), (12, 70), (40, 50)]
    stitched = [torch.randn(6, h // 3, w // 3, generator=g) for h, w in sizes]
    stitched[3][1:] -= 3.0  # an image whose classes but one win little area
    pending = device_results(stitched, sizes, cfg, name_to_class, pass_bytes=pass_bytes)
    results = results_from_device(pending, ("a", "b", "c", "d"), (("a",),) * 4)
    dropped = 0
    for logits, size, result in zip(stitched, sizes, results):
        probs, labels = _naive_post(logits, size, cfg, name_to_class)
        dropped += int((probs.flatten(1).amax(1) == 0).sum())
        np.testing.assert_array_equal(result.labels, labels.numpy())
        np.testing.assert_allclose(result.probs, probs.numpy(), rtol=0, atol=1e-6)
        expected = naive_stats(result.labels, result.probs)
        np.testing.assert_allclose(result.class_stats, expected, rtol=1e-9, atol=1e-12)
    if "area_threshold" in settings:
        assert dropped >= 1  # the test exercises a dropped class


def test_compared_and_refined_images_side_by_side_equal_their_segments_alone(tiny_clip):
    """Through a Segmenter with PAMR and ``compare``: passes of several images give the
    labels, host-only labels, probabilities and statistics of one image per pass."""
    seg = naclip(tiny_clip, refine=Refinement.PAMR, pamr_steps=2, prob_threshold=0.3)
    images = [random_image(50 + 9 * i, 70 + 5 * i, seed=20 + i) for i in range(4)]
    classes = "cat,sofa; couch,floor"
    alone = seg.segment_batch(images, classes, compare=True)
    seg.post_pass_bytes = 2**30
    together = seg.segment_batch(images, classes, compare=True)
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.baseline_labels, b.baseline_labels)
        np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.class_stats, b.class_stats, rtol=1e-9, atol=1e-12)


def test_passes_hold_consecutive_images_up_to_the_budget():
    from fbseg.pipeline.postprocess import passes

    assert passes([10, 10, 10, 30, 5], 25) == [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
    assert passes([10, 10, 5], 25) == [range(0, 3)]
    assert passes([3, 4], 0) == [range(0, 1), range(1, 2)]
    assert passes([], 100) == []


class _KernelCount(TorchDispatchMode):
    """Operations that make a new tensor or write one (views left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        shares = (
            first is not None
            and isinstance(out, torch.Tensor)
            and func.is_view
            and out.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        )
        self.kernels += not shares
        return out


def test_a_pass_makes_its_operations_once_for_all_its_images():
    """One pass: each further image adds its own resize and its own maximum per class
    (a few operations), not the whole chain again (a dozen and more)."""
    from fbseg.pipeline.postprocess import device_results, results_from_device

    name_to_class = [0, 1, 1, 2, 2, 2, 3]
    g = torch.Generator().manual_seed(3)

    def kernels(n: int, pass_bytes: int) -> int:
        stitched = [torch.randn(7, 9, 11, generator=g) for _ in range(n)]
        with _KernelCount() as count:
            results_from_device(
                device_results(
                    stitched, [(27, 33)] * n, DEFAULTS, name_to_class, pass_bytes=pass_bytes
                ),
                ("a", "b", "c", "d"),
                (("a",),) * 4,
            )
        return count.kernels

    per_image_alone = (kernels(6, 0) - kernels(2, 0)) / 4
    per_image_together = (kernels(6, 2**30) - kernels(2, 2**30)) / 4
    assert per_image_alone >= 12
    assert per_image_together <= 4


def test_a_pass_that_runs_out_of_memory_is_done_again_image_by_image(monkeypatch):
    """Side by side the images need more memory at once: a pass of several that fails for
    want of it is redone one image at a time, with the same results; an image that does not
    fit alone is an InputError of one line naming its size; any other error is raised."""
    from fbseg.errors import InputError
    from fbseg.pipeline.postprocess import device_results, results_from_device

    real = postprocess.probabilities_of_resized
    tried = []

    def tight(logits, config, name_to_class, spans=None):
        tried.append(logits.shape[-1] * logits.shape[-2])
        if spans is not None or logits.shape[-1] * logits.shape[-2] > 600:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(logits, config, name_to_class, spans)

    name_to_class = [0, 1, 2]
    g = torch.Generator().manual_seed(8)
    stitched = [torch.randn(3, 8, 10, generator=g) for _ in range(3)]

    def labels(sizes, pass_bytes: int) -> list[np.ndarray]:
        pending = device_results(stitched, sizes, DEFAULTS, name_to_class, pass_bytes=pass_bytes)
        return [r.labels for r in results_from_device(pending, ("a", "b", "c"), (("a",),) * 3)]

    sizes = [(16, 20), (24, 21), (16, 21)]
    expected = labels(sizes, 0)
    monkeypatch.setattr(postprocess, "probabilities_of_resized", tight)
    for got, want in zip(labels(sizes, 2**30), expected):
        np.testing.assert_array_equal(got, want)
    assert tried == [16 * 20 + 24 * 21 + 16 * 21, 16 * 20, 24 * 21, 16 * 21]

    with pytest.raises(InputError) as caught:
        labels([(16, 20), (30, 25), (16, 21)], 2**30)  # the second does not fit alone
    message = caught.value.one_line()
    assert "25×30 image (3 names) do not fit" in message and "\n" not in message

    def broken(logits, config, name_to_class, spans=None):
        raise RuntimeError("an unrelated failure")

    monkeypatch.setattr(postprocess, "probabilities_of_resized", broken)
    with pytest.raises(RuntimeError, match="unrelated"):
        labels(sizes, 2**30)
