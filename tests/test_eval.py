"""`fbseg eval`: dataset layouts, label handling, mmseg's mIoU, resume, the CLI."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fbseg.errors import InputError
from fbseg.eval.datasets import DATASETS, find_samples, load_label
from fbseg.eval.metrics import area_counts, scores_from_counts
from fbseg_cli import app

from conftest import TINY, interrupt_on_call
from helpers import EndsTheProcessThatReadsIt, make_dataset


@pytest.mark.parametrize("name", DATASETS.names())
def test_each_layout_pairs_images_with_their_labels(tmp_path, name):
    ids = make_dataset(name, tmp_path, n=3)
    spec = DATASETS.get(name)
    samples = find_samples(spec, tmp_path)
    assert [s.id for s in samples] == sorted(ids) if not spec.layout.split else ids
    for s in samples:
        assert s.image.is_file() and s.label.is_file()
        assert s.label.name.endswith(spec.layout.label_suffix)
        assert (
            s.label.name[: -len(spec.layout.label_suffix)]
            == s.image.name[: -len(spec.layout.img_suffix)]
        )
    assert len(spec.classes()) == spec.num_classes


def test_reference_names_and_protocol():
    voc21 = DATASETS.get("voc21").classes()
    assert len(voc21.names[0]) == 26 and voc21.names[0][:3] == ("sky", "wall", "tree")
    assert len(voc21.flat_names) == 46
    city = DATASETS.get("cityscapes")
    assert "trafficlight" in city.classes().labels and "trafficsign" in city.classes().labels
    # (short side, window, stride, prob_thd, logit scale) per dataset, as the README's table
    # quotes the reference's configs; every other value is SegmentConfig's default.
    table = {
        n: (c.short_side, c.window, c.stride, c.prob_threshold, c.logit_scale)
        for n, c in ((n, DATASETS.get(n).config()) for n in DATASETS.names())
    }
    assert table == {
        "voc21": (336, 336, 112, 0.2, 40.0),
        "voc20": (336, 336, 112, 0.0, 40.0),
        "context60": (336, 336, 112, 0.14, 40.0),
        "context59": (336, 336, 112, 0.0, 40.0),
        "coco-object": (336, 336, 112, 0.3, 40.0),
        "coco-stuff": (336, 336, 112, 0.0, 40.0),
        "cityscapes": (448, 224, 80, 0.0, 40.0),
        "ade20k": (448, 336, 112, 0.0, 40.0),
    }
    assert [n for n in DATASETS.names() if DATASETS.get(n).reduce_zero_label] == [
        "ade20k",
        "context59",
        "voc20",
    ]


def test_missing_pieces_are_named(tmp_path):
    with pytest.raises(InputError, match="VOC2012/JPEGImages"):
        find_samples(DATASETS.get("voc21"), tmp_path)
    make_dataset("voc21", tmp_path, n=2)
    (tmp_path / "VOCdevkit/VOC2012/SegmentationClass/img001.png").unlink()
    with pytest.raises(InputError, match="1 of 2 samples lack files"):
        find_samples(DATASETS.get("voc21"), tmp_path)


def test_reduce_zero_label_as_mmseg(tmp_path):
    label = np.array([[0, 1, 2], [255, 21, 5]], np.uint8)
    Image.fromarray(label).save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_label(tmp_path / "l.png", True), [[255, 0, 1], [255, 20, 4]])
    np.testing.assert_array_equal(load_label(tmp_path / "l.png", False), label)
    pal = Image.fromarray(label, "P")
    pal.putpalette([7] * 768)
    pal.save(tmp_path / "p.png")  # palette label maps are read as indices
    np.testing.assert_array_equal(load_label(tmp_path / "p.png", False), label)


def test_miou_by_hand_with_absent_classes():
    pred = np.array([[0, 1], [1, 2]])
    label = np.array([[0, 1], [2, 255]])
    counts = area_counts(pred, label, 4)
    np.testing.assert_array_equal(counts, [[1, 1, 0, 0], [1, 2, 1, 0], [1, 2, 0, 0], [1, 1, 1, 0]])
    s = scores_from_counts(counts)
    # class 2: in the labels, never right → IoU 0; class 3: nowhere → NaN, left out of the mean
    assert s.miou == pytest.approx(50.0) and np.isnan(s.iou[3]) and s.iou[2] == 0
    assert s.aacc == pytest.approx(200 / 3) and s.macc == pytest.approx(200 / 3)


def test_miou_equals_a_plain_confusion_matrix_over_a_dataset():
    rng = np.random.default_rng(1)
    K = 7
    conf = np.zeros((K, K), np.int64)
    totals = np.zeros((4, K), np.int64)
    for _ in range(5):
        label = rng.integers(0, K - 1, size=(30, 40))  # class K-1 never labelled
        label[rng.random(label.shape) < 0.1] = 255
        pred = np.where(
            rng.random(label.shape) < 0.6, label, rng.integers(0, K - 2, size=label.shape)
        )
        pred = np.where(label == 255, rng.integers(0, K, size=label.shape), pred)
        totals += area_counts(pred, label, K)
        for t, p in zip(label.ravel(), pred.ravel()):
            if t != 255:
                conf[t, p] += 1
    ious = []
    for k in range(K):
        union = conf[k, :].sum() + conf[:, k].sum() - conf[k, k]
        if union:
            ious.append(conf[k, k] / union)
    s = scores_from_counts(totals)
    assert s.miou == pytest.approx(100 * sum(ious) / len(ious), abs=1e-9)
    assert s.aacc == pytest.approx(100 * np.trace(conf) / conf.sum(), abs=1e-9)


def _counts_pixel_by_pixel(pred, label, K, ignore_index=255):
    """mmseg's ``intersect_and_union`` one pixel at a time: pixels labelled ``ignore_index``
    are dropped; a prediction outside [0, K) counts in no class, nor does such a label (as
    ``torch.histc(x, bins=K, min=0, max=K - 1)`` drops them); the intersection is where
    prediction and label are the same class."""
    inter, pred_area, label_area = np.zeros(K, int), np.zeros(K, int), np.zeros(K, int)
    for p, t in zip(pred.ravel().tolist(), label.ravel().tolist()):
        if t == ignore_index:
            continue
        if 0 <= p < K:
            pred_area[p] += 1
        if 0 <= t < K:
            label_area[t] += 1
            if p == t:
                inter[t] += 1
    return np.stack([inter, pred_area + label_area - inter, pred_area, label_area])


@pytest.mark.parametrize(
    ("dtype", "ignore_index"),
    [(np.uint8, 255), (np.int64, 255), (np.int16, 3), (np.uint16, 255)],
)
def test_area_counts_match_mmseg_pixel_by_pixel(dtype, ignore_index):
    """Out-of-range labels and predictions (negative ones too), ignored pixels, and an
    ignore index inside the class range."""
    rng = np.random.default_rng(7)
    K = 6
    lo = -3 if np.issubdtype(dtype, np.signedinteger) else 0
    for shape in [(1, 1), (13, 17), (40, 30)]:
        label = rng.integers(lo, K + 4, size=shape).astype(dtype)
        label[rng.random(shape) < 0.2] = 255 if ignore_index == 255 else ignore_index
        pred = np.where(rng.random(shape) < 0.5, label, rng.integers(lo, K + 3, size=shape))
        pred = pred.astype(dtype)
        np.testing.assert_array_equal(
            area_counts(pred, label, K, ignore_index),
            _counts_pixel_by_pixel(pred, label, K, ignore_index),
        )


def _eval_args(root, tiny_ckpt, work, dataset="voc20"):
    return [
        "eval",
        "--dataset",
        dataset,
        "--root",
        str(root),
        "--model",
        TINY,
        "--checkpoint",
        str(tiny_ckpt),
        "--host",
        "naclip",
        "--work-dir",
        str(work),
        "--json",
        "-q",
    ]


def test_eval_end_to_end_matches_per_image_segmentation_and_resumes(
    tmp_path, tiny_ckpt, tiny_clip, monkeypatch
):
    from fbseg.pipeline.segmenter import Segmenter

    make_dataset("voc20", tmp_path / "data", n=3)
    r = CliRunner().invoke(app, _eval_args(tmp_path / "data", tiny_ckpt, tmp_path / "w"))
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["images"] == 3 and len(report["per_class"]) == 20

    # independently: segment each image with the protocol, reduce labels, plain confusion matrix
    seg = Segmenter(tiny_clip, model_name=TINY, host="naclip", device="cpu", precision="fp32")
    spec = DATASETS.get("voc20")
    conf = np.zeros((20, 20), np.int64)
    for s in find_samples(spec, tmp_path / "data"):
        res = seg.segment(s.image, spec.classes(), short_side=336, window=336, stride=112)
        raw = np.asarray(Image.open(s.label)).astype(np.int64)
        gt = np.where((raw == 0) | (raw == 255), 255, raw - 1)
        for t, p in zip(gt.ravel(), res.labels.ravel()):
            if t != 255:
                conf[t, p] += 1
    ious = [
        conf[k, k] / u for k in range(20) if (u := conf[k].sum() + conf[:, k].sum() - conf[k, k])
    ]
    assert report["mIoU"] == pytest.approx(round(100 * np.mean(ious), 2), abs=0.006)

    def must_not_run(*a, **k):
        raise AssertionError("cached images must not be segmented again")

    monkeypatch.setattr(Segmenter, "segment_batch", must_not_run)
    r2 = CliRunner().invoke(app, _eval_args(tmp_path / "data", tiny_ckpt, tmp_path / "w"))
    assert r2.exit_code == 0 and json.loads(r2.stdout)["mIoU"] == report["mIoU"]


def test_eval_batches_images_into_one_call_with_the_same_scores(tmp_path, tiny_ckpt, monkeypatch):
    from fbseg.pipeline.segmenter import Segmenter

    make_dataset("voc20", tmp_path / "data", n=3, size=(40, 56))
    one = CliRunner().invoke(app, _eval_args(tmp_path / "data", tiny_ckpt, tmp_path / "w1"))
    sizes = []
    real = Segmenter.segment_batch

    def spy(self, images, *a, **k):
        sizes.append(len(images))
        return real(self, images, *a, **k)

    monkeypatch.setattr(Segmenter, "segment_batch", spy)
    args = _eval_args(tmp_path / "data", tiny_ckpt, tmp_path / "w2") + ["--batch", "2"]
    two = CliRunner().invoke(app, args)
    assert one.exit_code == two.exit_code == 0, two.output
    assert sizes == [2, 1]
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["per_class"] == b["per_class"] and a["mIoU"] == b["mIoU"]


def test_eval_counts_pixels_beside_the_model_and_reports_in_order(tmp_path, tiny_clip, monkeypatch):
    """Each group's pixels are counted in the reader threads, not in the thread that drives
    the model; every image is reported once, in the dataset's order."""
    import threading

    from fbseg.eval import evaluate as evaluate_mod
    from fbseg.pipeline.segmenter import Segmenter

    make_dataset("voc20", tmp_path / "data", n=5, size=(40, 56))
    spec = DATASETS.get("voc20")
    samples = find_samples(spec, tmp_path / "data")
    counted_in = []
    real = evaluate_mod.area_counts

    def spy(*args, **kwargs):
        counted_in.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "area_counts", spy)
    seg = Segmenter(tiny_clip, model_name=TINY, host="naclip", device="cpu", precision="fp32")
    seen = []
    report = evaluate_mod.evaluate(seg, spec, samples, on_image=seen.append, images_per_call=2)
    assert [i.sample.id for i in seen] == [s.id for s in samples]
    assert len(counted_in) == 5 and all(n.startswith("fbseg-eval-read") for n in counted_in)
    assert np.array_equal(report.totals, sum(i.counts for i in seen))


def test_eval_reads_through_processes_as_through_threads(tmp_path, tiny_clip):
    """Decoding in reader processes (the default beside a GPU) gives the same counts, in the
    same order; a reader process that dies stops the evaluation with one line naming the
    image."""
    from dataclasses import replace

    from fbseg.eval.evaluate import evaluate
    from fbseg.pipeline.segmenter import Segmenter

    make_dataset("voc20", tmp_path / "data", n=3, size=(40, 56))
    spec = DATASETS.get("voc20")
    samples = find_samples(spec, tmp_path / "data")
    seg = Segmenter(tiny_clip, model_name=TINY, host="naclip", device="cpu", precision="fp32")
    runs = {}
    for processes in (False, True):
        seen = []
        evaluate(seg, spec, samples, on_image=seen.append, reader_processes=processes)
        runs[processes] = [(i.sample.id, i.counts) for i in seen]
    assert [k for k, _ in runs[True]] == [k for k, _ in runs[False]] == [s.id for s in samples]
    for (_, a), (_, b) in zip(runs[True], runs[False]):
        np.testing.assert_array_equal(a, b)

    broken = [samples[0], replace(samples[1], image=EndsTheProcessThatReadsIt()), samples[2]]
    with pytest.raises(InputError, match="not read: a reader process ended"):
        evaluate(seg, spec, broken, reader_processes=True)


def test_eval_resumes_after_an_interruption(tmp_path, tiny_ckpt, monkeypatch):
    from fbseg.pipeline.segmenter import Segmenter

    make_dataset("context59", tmp_path / "data", n=4)
    calls = interrupt_on_call(monkeypatch, Segmenter, "segment_batch", 3)
    args = _eval_args(tmp_path / "data", tiny_ckpt, tmp_path / "w", "context59")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 130 and "2 of 4 images scored" in r.stderr
    counts = list((tmp_path / "w" / "counts").rglob("*.npy"))
    assert len(counts) == 2
    calls["n"] = -10
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and calls["n"] == -8  # exactly the two remaining images
    assert json.loads(r.stdout)["images"] == 4


def test_eval_bad_root_is_one_line(tmp_path, tiny_ckpt):
    r = CliRunner().invoke(app, _eval_args(tmp_path / "nothing", tiny_ckpt, tmp_path / "w"))
    assert r.exit_code == 4 and "expected folder" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(app, _eval_args(tmp_path, tiny_ckpt, tmp_path / "w", "voc22"))
    assert r.exit_code == 2 and "voc21" in r.stderr


def test_eval_unwritable_work_dir_fails_before_any_weights_load(tmp_path, tiny_ckpt, monkeypatch):
    """Counts and the report go to --work-dir: one that cannot be written into stops the
    evaluation with one line before the model loads, not at the first image's count."""
    import fbseg.pipeline.segmenter

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(fbseg.pipeline.segmenter, "load_clip", no_loading)
    make_dataset("voc20", tmp_path / "data", n=1)
    (tmp_path / "file").write_bytes(b"x")
    r = CliRunner().invoke(app, _eval_args(tmp_path / "data", tiny_ckpt, tmp_path / "file" / "w"))
    assert r.exit_code == 4, r.output
    assert "cannot write into" in r.stderr and "Traceback" not in r.output


def test_evaluate_checks_its_work_dir_before_the_first_image(tmp_path, tiny_clip, monkeypatch):
    from fbseg.errors import OutputError
    from fbseg.eval.evaluate import evaluate
    from fbseg.pipeline.segmenter import Segmenter

    seg = Segmenter(tiny_clip, model_name=TINY, host="naclip", device="cpu")

    def must_not_run(*a, **k):
        raise AssertionError("an image was segmented")

    monkeypatch.setattr(Segmenter, "segment_batch", must_not_run)
    make_dataset("voc20", tmp_path / "data", n=1)
    spec = DATASETS.get("voc20")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OutputError, match="cannot write into"):
        evaluate(seg, spec, find_samples(spec, tmp_path / "data"), work_dir=tmp_path / "file" / "w")
