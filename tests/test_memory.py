"""Out of device memory: a window batch is halved and retried with the same results; a single
window that does not fit fails its image with one line and the run goes on. Faults are
injected at the model call (no GPU here)."""

import numpy as np
import pytest
import torch
from PIL import Image

from fbseg.pipeline.config import SegmentConfig

import naive
from conftest import random_image
from helpers import tiny_segmenter


def _oom_when(monkeypatch, too_big):
    """Make the crop model raise CUDA's out-of-memory error for crops ``too_big`` says."""
    import fbseg.pipeline.segmenter as segmod

    real = segmod.crop_logits
    seen = []

    def guarded(model, crops, *a, **k):
        seen.append(tuple(crops.shape))
        if too_big(crops):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, crops, *a, **k)

    monkeypatch.setattr(segmod, "crop_logits", guarded)
    return seen


def test_batch_halved_on_out_of_memory_gives_the_same_result(tiny_clip, monkeypatch):
    seg = tiny_segmenter(tiny_clip, ["cat", "sofa", "couch", "floor"], windows_per_forward=8)
    classes = "cat,sofa; couch,floor"
    images = [random_image(70, 130, seed=i) for i in range(3)]  # 3 windows of 64² each
    kw = dict(short_side=64, window=64, stride=32)
    expected = seg.segment_batch(images, classes, **kw)
    seen = _oom_when(monkeypatch, lambda crops: crops.shape[0] > 2)
    got = seg.segment_batch(images, classes, **kw)
    assert [s[0] for s in seen] == [8, 4, 2, 2, 2, 2, 1]  # 9 windows: halved twice, then 2s
    assert seg.windows_per_forward == 2  # later calls start from what fitted
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-5)


def _folder_run(seg, src, tmp_path, images_per_group: int):
    """``segment_folder`` over ``src`` with the classes "a,b", outputs under tmp_path/out: the
    run, and each outcome by file name."""
    from fbseg.classes import parse_classes
    from fbseg.runs.folder import segment_folder
    from fbseg.runs.outputs import OutputOptions

    classes = parse_classes("a,b")
    run = segment_folder(
        seg,
        [str(src)],
        classes,
        OutputOptions(out_dir=tmp_path / "out", class_labels=classes.labels),
        images_per_group=images_per_group,
    )
    return run, {o.item.path.name: o for o in run.outcomes}


def test_a_window_that_never_fits_fails_its_image_only(tiny_clip, monkeypatch, tmp_path):
    from fbseg.runs.stream import ItemStatus

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(random_image(64, 160, seed=1)).save(src / "wide.png")
    Image.fromarray(random_image(64, 64, seed=2)).save(src / "square.png")
    whole_images = SegmentConfig(short_side=None, window=None)
    seg = tiny_segmenter(tiny_clip, ["a", "b"], config=whole_images)
    _oom_when(monkeypatch, lambda crops: crops.shape[-1] > 100)
    run, status = _folder_run(seg, src, tmp_path, images_per_group=2)
    assert status["square.png"].status is ItemStatus.DONE
    assert status["wide.png"].status is ItemStatus.FAILED
    reason = status["wide.png"].reason
    assert "64×160 window does not fit" in reason and "\n" not in reason
    assert run.exit_code == 4 and (tmp_path / "out" / "square.mask.png").exists()


def test_an_image_whose_probabilities_never_fit_fails_alone(tiny_clip, monkeypatch, tmp_path):
    """Past the model, an image's class probabilities at its full size need memory too: one
    that runs out of it alone fails with one line, and the others of its call are written."""
    from fbseg.pipeline import postprocess
    from fbseg.runs.stream import ItemStatus

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(random_image(120, 200, seed=1)).save(src / "big.png")
    for i in range(2):
        Image.fromarray(random_image(64, 80, seed=2 + i)).save(src / f"small{i}.png")
    seg = tiny_segmenter(
        tiny_clip, ["a", "b"], config=SegmentConfig(short_side=64, window=64, stride=32)
    )
    seg.post_pass_bytes = 2**30  # all three side by side first
    real = postprocess.probabilities_of_resized

    def tight(logits, *args, **kwargs):
        if logits.shape[-1] * logits.shape[-2] > 64 * 80:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(postprocess, "probabilities_of_resized", tight)
    run, status = _folder_run(seg, src, tmp_path, images_per_group=3)
    assert status["small0.png"].status is status["small1.png"].status is ItemStatus.DONE
    assert status["big.png"].status is ItemStatus.FAILED
    reason = status["big.png"].reason
    assert "200×120 image (2 names) do not fit" in reason and "\n" not in reason
    assert run.exit_code == 4 and (tmp_path / "out" / "small1.mask.png").exists()


def _has_nnc(shapes, n_min: int, C: int) -> list:
    """Shapes with the names axis C and one patch axis (≥ n_min) twice: an N×N×C array."""
    return [
        s
        for s in shapes
        if C in s and any(s.count(n) >= 2 for n in set(s) if n >= n_min and n != C)
    ]


@pytest.mark.parametrize("host", ["maskclip", "sclip", "clearclip", "naclip", "proxyclip"])
def test_no_configuration_makes_an_n_by_n_by_c_array(host, tiny_clip, dino_ckpt):
    """Every tensor a segmentation makes, FSA on and compared, for each host: none holds the
    patches twice and the names (the reference's KL does). The watcher finds the naive form's."""
    from fbseg.hosts import HOSTS
    from fbseg.hosts.base import HostOptions
    from fbseg.tensor_memory import TensorMemory

    options = HostOptions(proxy="dino", proxy_checkpoint=dino_ckpt)
    names = [f"n{i}" for i in range(7)]  # C = 7: no other axis has this length
    seg = tiny_segmenter(
        tiny_clip,
        names,
        host=HOSTS.get(host).build(options),
        config=SegmentConfig(short_side=64, window=64, stride=32),
    )
    with TensorMemory() as mem:
        seg.segment(random_image(64, 100, seed=3), names, compare=True)
    assert _has_nnc(mem.shapes, 16, 7) == []
    assert any(16 in s or 64 in s for s in mem.shapes)  # the patch grid was seen at all

    with TensorMemory() as naive_mem:
        naive.kl_dense(torch.softmax(torch.randn(16, 7), dim=-1))
    assert _has_nnc(naive_mem.shapes, 16, 7) != []
