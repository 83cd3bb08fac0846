"""PAMR against a naive pixel-by-neighbour implementation, its place in the pipeline, the
other post-processing steps some presets need, and the preset tables against the official
configs they quote."""

import numpy as np
import pytest
import torch
from PIL import Image

from fbseg.pipeline.config import Refinement, SegmentConfig
from fbseg.pipeline.postprocess import drop_small_areas
from fbseg.pipeline.refine import pamr
from fbseg.pipeline.segmenter import Segmenter
from fbseg.pipeline.window import protocol_size

import naive
from conftest import ASSETS, TINY, random_image
from helpers import FAST, normalised, with_text


def _random(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "steps,dilations", [(1, (1,)), (3, (8, 16)), (10, (8, 16)), (2, (1, 2, 4, 8, 12, 24))]
)
def test_pamr_equals_naive_on_random_logits(steps, dilations):
    image, logits = _random((3, 37, 53), 0), _random((5, 37, 53), 1)
    ours = pamr(image, logits, steps, dilations)
    torch.testing.assert_close(ours, naive.pamr(image, logits, steps, dilations), rtol=0, atol=1e-5)


def test_pamr_equals_naive_on_a_photo_and_chunks_change_nothing():
    rgb = np.array(Image.open(ASSETS / "cat.jpg").convert("RGB"))[::2, ::2].copy()
    image = normalised(rgb, rgb.shape[:2])
    logits = _random((7, *rgb.shape[:2]), 2) * 0.05
    expected = naive.pamr(image, logits, 10, (8, 16))
    torch.testing.assert_close(pamr(image, logits, 10, (8, 16)), expected, rtol=0, atol=1e-5)
    one_name_a_chunk = pamr(image, logits, 10, (8, 16), chunk_bytes=1)
    torch.testing.assert_close(one_name_a_chunk, expected, rtol=0, atol=1e-5)


def test_pamr_smooths_towards_the_image_edges():
    """A noisy two-region labelling of a two-region image: PAMR agrees with the image more."""
    image = torch.zeros(3, 40, 40)
    image[:, :, 20:] = 1.0
    truth = torch.zeros(2, 40, 40)
    truth[0, :, :20], truth[1, :, 20:] = 1.0, 1.0
    noisy = truth + 0.8 * _random((2, 40, 40), 3)
    before = (noisy.argmax(0) == truth.argmax(0)).float().mean()
    after = (pamr(image, noisy, 10, (1, 2)).argmax(0) == truth.argmax(0)).float().mean()
    assert after > before and after > 0.99


@pytest.fixture(scope="module")
def seg(tiny_clip):
    s = Segmenter(tiny_clip, model_name=TINY, host="naclip", device="cpu", precision="fp32")
    with_text(s, ["cat", "sofa; couch", "floor"], 32)
    return s


def _naive_logits(seg, tiny_clip, rgb, text, window, short_side=64):
    size = protocol_size(*rgb.shape[:2], short_side)
    img = normalised(rgb, size)
    with torch.no_grad():
        return img, naive.slide_logits(
            lambda c: naive.crop_logits("naclip", tiny_clip.visual, c, text, False, 3.0),
            img,
            window,
            32,
            16,
            rgb.shape[:2],
        )


def test_segment_with_pamr_equals_the_naive_chain(seg, tiny_clip):
    """FSA off so the comparison is exact: slide → resize → PAMR guided by the protocol image
    resized to the image → softmax → class max."""
    rgb = random_image(70, 130, seed=4)
    text = seg.encode_text("cat,sofa; couch,floor")
    cfg = SegmentConfig(
        short_side=64,
        window=64,
        stride=32,
        feedback=False,
        refine=Refinement.PAMR,
        pamr_steps=3,
        pamr_dilations=(1, 2),
    )
    ours = seg.segment(rgb, "cat,sofa; couch,floor", cfg)
    img, logits = _naive_logits(seg, tiny_clip, rgb, text, 64)
    guide = torch.nn.functional.interpolate(img[None], size=rgb.shape[:2], mode="bilinear")[0]
    expected = naive.probs_from_logits(naive.pamr(guide, logits, 3, (1, 2)), 40.0, [0, 1, 1, 2])
    np.testing.assert_allclose(ours.probs, expected.numpy(), rtol=0, atol=1e-5)
    assert ours.meta["settings"]["refine"] == "pamr"


def test_whole_image_mode_equals_the_naive_unpadded_forward(seg, tiny_clip):
    rgb = random_image(70, 130, seed=5)  # 64×119 at the protocol size: not a patch multiple
    text = seg.encode_text("cat,sofa; couch,floor")
    ours = seg.segment(rgb, "cat,sofa; couch,floor", short_side=64, window=None, feedback=False)
    _, logits = _naive_logits(seg, tiny_clip, rgb, text, None)
    expected = naive.probs_from_logits(logits, 40.0, [0, 1, 1, 2])
    np.testing.assert_allclose(ours.probs, expected.numpy(), rtol=0, atol=1e-5)


def test_area_threshold_as_sclip_computes_it():
    """SCLIP's area_thd, written as its segmentor does (one-hot areas, background left out)."""
    g = torch.Generator().manual_seed(6)
    probs = torch.softmax(torch.randn(4, 30, 30, generator=g) * 3, dim=0)
    probs[3] = probs[3] * 0.02  # a class that wins little area
    K = probs.shape[0]
    onehot = torch.nn.functional.one_hot(probs.argmax(0), K).to(probs.dtype)
    area = onehot[:, :, 1:].sum((0, 1), keepdim=True)
    keep = (area > 0.1 * area.sum()).to(probs.dtype)
    expected = probs.clone()
    expected[1:] *= keep.transpose(0, -1)
    torch.testing.assert_close(drop_small_areas(probs, 0.1), expected)
    assert keep.flatten().tolist().count(0.0) >= 1  # the test exercises a dropped class


def test_renormalisation_changes_probabilities_not_labels(seg):
    rgb = random_image(60, 80, seed=7)
    kw = dict(short_side=64, window=64, stride=32)
    plain = seg.segment(rgb, "cat,sofa; couch,floor", **kw)
    renorm = seg.segment(rgb, "cat,sofa; couch,floor", renormalize=True, **kw)
    np.testing.assert_array_equal(plain.labels, renorm.labels)
    np.testing.assert_allclose(renorm.probs.sum(0), 1.0, atol=1e-5)
    assert not np.allclose(plain.probs.sum(0), 1.0)  # names share classes: sums exceed 1


# ---------------------------------------------------------------- presets vs official configs
# Each value quoted from the official repository at the commit docs/hosts.md names:
QUOTED = {
    # wangf3014/SCLIP@b56bd30: clip_segmentor.py:20-21 (pamr_steps=0, slide_stride=112,
    # slide_crop=224, logit_scale=40); configs/cfg_voc21.py:6-8 (logit_scale=65, prob_thd=0.1,
    # area_thd=0.1); cfg_context60.py (logit_scale=50, prob_thd=0.1); cfg_coco_object.py
    # (logit_scale=50, prob_thd=0.1); cfg_coco_stuff164k.py Resize (2048, 448);
    # cfg_city_scapes.py Resize (2048, 560); every other Resize (2048, 336).
    "sclip": {
        "voc21": (336, 224, 112, 65.0, 0.1, None, 0.1, False),
        "voc20": (336, 224, 112, 40.0, 0.0, None, None, False),
        "context60": (336, 224, 112, 50.0, 0.1, None, None, False),
        "context59": (336, 224, 112, 40.0, 0.0, None, None, False),
        "coco-object": (336, 224, 112, 50.0, 0.1, None, None, False),
        "coco-stuff": (448, 224, 112, 40.0, 0.0, None, None, False),
        "cityscapes": (560, 224, 112, 40.0, 0.0, None, None, False),
        "ade20k": (336, 224, 112, 40.0, 0.0, None, None, False),
    },
    # sinahmr/NACLIP@0cac3a6: naclip.py:21-22 (pamr_steps=10, pamr_stride=(8, 16),
    # logit_scale=40, slide_stride=112, slide_crop=224), naclip.py:140-142 (renormalised
    # probabilities); configs/cfg_voc21.py:5-6 (prob_thd=0.1, slide_crop=0); cfg_voc20.py:5
    # (slide_crop=0); cfg_context60.py:5 and cfg_coco_object.py (prob_thd=0.1);
    # cfg_city_scapes.py Resize (2048, 560); every other Resize (2048, 336).
    "naclip": {
        "voc21": (336, None, 112, 40.0, 0.1, (10, (8, 16)), None, True),
        "voc20": (336, None, 112, 40.0, 0.0, (10, (8, 16)), None, True),
        "context60": (336, 224, 112, 40.0, 0.1, (10, (8, 16)), None, True),
        "context59": (336, 224, 112, 40.0, 0.0, (10, (8, 16)), None, True),
        "coco-object": (336, 224, 112, 40.0, 0.1, (10, (8, 16)), None, True),
        "coco-stuff": (336, 224, 112, 40.0, 0.0, (10, (8, 16)), None, True),
        "cityscapes": (560, 224, 112, 40.0, 0.0, (10, (8, 16)), None, True),
        "ade20k": (336, 224, 112, 40.0, 0.0, (10, (8, 16)), None, True),
    },
    # mc-lan/ClearCLIP@ad68a40: clearclip_segmentor.py:22-23 (logit_scale=50, slide_stride=224,
    # slide_crop=448); configs/cfg_voc21.py:6 (prob_thd=0.5), cfg_context60.py (0.15),
    # cfg_coco_object.py (0.4), cfg_city_scapes.py:6 (slide_crop=224); every Resize (2048, 448).
    "clearclip": {
        "voc21": (448, 448, 224, 50.0, 0.5, None, None, False),
        "voc20": (448, 448, 224, 50.0, 0.0, None, None, False),
        "context60": (448, 448, 224, 50.0, 0.15, None, None, False),
        "context59": (448, 448, 224, 50.0, 0.0, None, None, False),
        "coco-object": (448, 448, 224, 50.0, 0.4, None, None, False),
        "coco-stuff": (448, 448, 224, 50.0, 0.0, None, None, False),
        "cityscapes": (448, 224, 224, 50.0, 0.0, None, None, False),
        "ade20k": (448, 448, 224, 50.0, 0.0, None, None, False),
    },
    # mc-lan/ProxyCLIP@e7b767f: proxyclip_segmentor.py:30-31 (logit_scale=40, slide_stride=112,
    # slide_crop=336); configs/cfg_voc21.py (prob_thd=0.2), cfg_context60.py (0.15),
    # cfg_coco_object.py (0.25), cfg_city_scapes.py (slide_stride=112, slide_crop=224,
    # Resize (2048, 448)), cfg_ade20k.py Resize (2048, 448); every other Resize (2048, 336).
    "proxyclip": {
        "voc21": (336, 336, 112, 40.0, 0.2, None, None, False),
        "voc20": (336, 336, 112, 40.0, 0.0, None, None, False),
        "context60": (336, 336, 112, 40.0, 0.15, None, None, False),
        "context59": (336, 336, 112, 40.0, 0.0, None, None, False),
        "coco-object": (336, 336, 112, 40.0, 0.25, None, None, False),
        "coco-stuff": (336, 336, 112, 40.0, 0.0, None, None, False),
        "cityscapes": (448, 224, 112, 40.0, 0.0, None, None, False),
        "ade20k": (448, 336, 112, 40.0, 0.0, None, None, False),
    },
}


@pytest.mark.parametrize("name", sorted(QUOTED))
def test_preset_tables_equal_the_official_configs(name):
    from fbseg.eval.datasets import DATASETS
    from fbseg.presets import PRESETS

    preset = PRESETS.get(name)
    assert preset.host == name
    for dataset in DATASETS.names():
        c = preset.config(dataset)
        refine = (c.pamr_steps, c.pamr_dilations) if c.refine is Refinement.PAMR else None
        got = (
            c.short_side,
            c.window,
            c.stride,
            c.logit_scale,
            c.prob_threshold,
            refine,
            c.area_threshold,
            c.renormalize,
        )
        assert got == QUOTED[name][dataset], dataset
        assert c.feedback  # FSA stays on: --no-feedback gives the paper's own method
    assert preset.config() == preset.config("coco-stuff")  # what segment and explain use


def test_every_preset_is_checked_and_fsa_is_the_default():
    from fbseg.presets import DEFAULT_PRESET, PRESETS

    assert set(PRESETS.names()) == set(QUOTED) | {"fsa"}
    assert DEFAULT_PRESET == "fsa" and PRESETS.get("fsa").config() == SegmentConfig()


# ---------------------------------------------------------------- the CLI and explain
def _cli(args):
    from typer.testing import CliRunner

    from fbseg_cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


def test_preset_sets_host_and_protocol_and_flags_override_it(tmp_path, tiny_ckpt):
    import json

    base = [
        "segment",
        str(ASSETS / "cat.jpg"),
        "-c",
        "cat,rug",
        "--model",
        TINY,
        "--checkpoint",
        str(tiny_ckpt),
        "--short-side",
        "64",
        "--json",
        "-q",
    ]
    r = _cli([*base, "-o", str(tmp_path / "a"), "--preset", "naclip"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["host"] == "naclip"
    s = out["settings"]
    assert (s["window"], s["stride"], s["refine"], s["pamr_steps"], s["renormalize"]) == (
        224,
        112,
        "pamr",
        10,
        True,
    )
    r = _cli(
        [
            *base,
            "-o",
            str(tmp_path / "b"),
            "--preset",
            "naclip",
            "--refine",
            "none",
            "--host",
            "clearclip",
            "--window",
            "0",
        ]
    )
    out = json.loads(r.stdout)
    assert out["host"] == "clearclip" and "refine" not in out["settings"]
    assert out["settings"]["window"] is None
    r = _cli([*base, "-o", str(tmp_path / "c"), "--host", "naclip", "--pamr-steps", "2"])
    s = json.loads(r.stdout)["settings"]
    assert (s["refine"], s["pamr_steps"], s["pamr_dilations"]) == ("pamr", 2, [8, 16])


@pytest.mark.parametrize(
    "args,text",
    [
        (["--preset", "paper"], "unknown preset 'paper'"),
        (["--refine", "crf"], "unknown refinement 'crf'"),
        (["--pamr-dilations", "8,x"], "--pamr-dilations"),
        (["--pamr-steps", "0", "--refine", "pamr"], "--pamr-steps"),
    ],
)
def test_bad_preset_and_refine_flags_are_one_line_usage_errors(tmp_path, tiny_ckpt, args, text):
    r = _cli(
        [
            "segment",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat",
            "-o",
            str(tmp_path),
            *FAST,
            "--checkpoint",
            str(tiny_ckpt),
            *args,
        ]
    )
    assert r.exit_code == 2 and text in r.output and "Traceback" not in r.output


def test_explain_shows_the_refined_mask_beside_the_unrefined(seg, tmp_path, tiny_ckpt):
    rgb = random_image(70, 130, seed=8)
    kw = dict(short_side=64, window=64, stride=32)
    exp = seg.explain(rgb, "cat,sofa; couch,floor", refine="pamr", pamr_dilations=(1, 2), **kw)
    refined = seg.segment(rgb, "cat,sofa; couch,floor", refine="pamr", pamr_dilations=(1, 2), **kw)
    plain = seg.segment(rgb, "cat,sofa; couch,floor", **kw)
    np.testing.assert_array_equal(exp.refined_labels, refined.labels)
    np.testing.assert_array_equal(exp.feedback_labels, plain.labels)
    r = _cli(
        [
            "explain",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat,rug",
            "-o",
            str(tmp_path),
            *FAST,
            "--checkpoint",
            str(tiny_ckpt),
            "--refine",
            "pamr",
            "--html",
            "-q",
        ]
    )
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "cat.explain.png").size[0] > 0
    assert "with FSA + PAMR" in (tmp_path / "cat.explain.html").read_text()


def test_eval_with_a_preset_uses_its_dataset_config(tmp_path, tiny_ckpt):
    import json

    from helpers import make_dataset

    make_dataset("voc21", tmp_path / "data", n=2)
    r = _cli(
        [
            "eval",
            "--dataset",
            "voc21",
            "--root",
            str(tmp_path / "data"),
            "--model",
            TINY,
            "--checkpoint",
            str(tiny_ckpt),
            "--host",
            "naclip",
            "--preset",
            "sclip",
            "--short-side",
            "64",
            "--work-dir",
            str(tmp_path / "w"),
            "--json",
            "-q",
        ]
    )
    assert r.exit_code == 0, r.output
    settings = json.loads(r.stdout)["settings"]
    assert settings["logit_scale"] == 65.0 and settings["prob_threshold"] == 0.1
    assert settings["area_threshold"] == 0.1 and settings["short_side"] == 64
