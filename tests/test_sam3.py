"""The SAM 3 engine with a tiny random SAM 3 saved by ``save_pretrained`` and loaded back the
user's way: scores and labels against a naive per-name loop over transformers' own model, the
tokenizer against open_clip's, the CLI end to end, and its failures."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from conftest import ASSETS, random_image
from helpers import bad_folder

transformers = pytest.importorskip("transformers")
TEXT_LENGTH = 32


def tiny_config():
    from transformers import Sam3Config

    hidden = 32
    small = dict(hidden_size=hidden, num_attention_heads=2, intermediate_size=64)
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=112,
                patch_size=14,
                window_size=4,
                global_attn_indexes=[1],
                pretrain_image_size=56,
            ),
            fpn_hidden_size=hidden,
            backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        ),
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            projection_dim=32,
            max_position_embeddings=TEXT_LENGTH,
        ),
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=8, **small),
        mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=2),
    )


@pytest.fixture(scope="session")
def sam3_dir(tmp_path_factory):
    from transformers import Sam3Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sam3") / "tiny"
    Sam3Model(tiny_config()).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def text_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sam3-text")


@pytest.fixture(scope="session")
def engine(sam3_dir, text_cache):
    from fbseg.pipeline.sam3 import Sam3Segmenter

    return Sam3Segmenter.from_pretrained(
        sam3_dir, device="cpu", precision="fp32", names_per_forward=2, text_cache_dir=text_cache
    )


def open_clip_ids(names):
    """Token ids and mask by open_clip's own tokenizer, padded as SAM 3's processor pads."""
    import open_clip

    ids = open_clip.get_tokenizer("ViT-B-16")(names, context_length=TEXT_LENGTH)
    mask = (ids != 0).long()
    return torch.where(mask.bool(), ids, torch.full_like(ids, 49407)), mask


def test_tokenizer_equals_open_clips():
    from fbseg.models.sam3 import clip_tokenizer_from_open_clip

    names = ["cat", "traffic light", "a photo of a Dog!", "café crème", "potted plant"]
    tok = clip_tokenizer_from_open_clip()(
        names, padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt"
    )
    ids, mask = open_clip_ids(names)
    torch.testing.assert_close(tok["input_ids"], ids)
    torch.testing.assert_close(tok["attention_mask"], mask)


def naive_scores(model, rgb, names):
    """Each name on its own through the whole model (image encoded again every time)."""
    from transformers import Sam3ImageProcessor

    size = model.config.vision_config.image_size
    px = Sam3ImageProcessor(size={"height": size, "width": size})(
        images=np.array(rgb), return_tensors="pt"
    )["pixel_values"]
    out = []
    for name in names:
        ids, mask = open_clip_ids([name])
        with torch.no_grad():
            r = model(pixel_values=px, input_ids=ids, attention_mask=mask)
        score = torch.sigmoid(r.semantic_seg[0, 0]) * torch.sigmoid(r.presence_logits[0, 0])
        out.append(
            F.interpolate(
                score[None, None], size=rgb.shape[:2], mode="bilinear", align_corners=False
            )[0, 0]
        )
    return torch.stack(out)


@pytest.mark.parametrize(
    "classes,threshold",
    [
        (["cat", "rug"], 0.0),
        (["cat; kitten", "rug; carpet; mat", "wall"], 0.0),
        (["sky; wall; tree", "cat", "sofa; couch"], 0.2455),
    ],
)
def test_engine_equals_a_naive_loop_over_names(engine, classes, threshold):
    from fbseg.classes import parse_classes

    rgb = np.array(Image.open(ASSETS / "cat.jpg").convert("RGB"))
    cl = parse_classes(classes)
    result = engine.segment(rgb, cl, prob_threshold=threshold)
    scores = naive_scores(engine.model, rgb, cl.flat_names)
    probs = torch.stack(
        [
            scores[[i for i, c in enumerate(cl.name_to_class) if c == k]].max(0).values
            for k in range(len(cl.labels))
        ]
    )
    top, labels = probs.max(0)
    labels[top < threshold] = 0
    np.testing.assert_allclose(result.probs, probs.numpy(), rtol=0, atol=1e-5)
    assert (result.labels == labels.numpy()).mean() > 0.9999
    if threshold:
        assert 0 < (top < threshold).float().mean() < 1  # the threshold is exercised


def test_processor_files_give_the_same_inputs(sam3_dir, tmp_path, engine):
    """A folder with Sam3Processor's files loads them; the defaults built without them give
    the same pixels and tokens."""
    import shutil

    from transformers import Sam3ImageProcessor, Sam3Processor

    from fbseg.models.sam3 import clip_tokenizer_from_open_clip
    from fbseg.pipeline.sam3 import Sam3Segmenter

    folder = tmp_path / "with-processor"
    shutil.copytree(sam3_dir, folder)
    Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": 112, "width": 112}),
        tokenizer=clip_tokenizer_from_open_clip(),
    ).save_pretrained(str(folder))
    other = Sam3Segmenter.from_pretrained(folder, device="cpu", precision="fp32")
    rgb = random_image(90, 140, seed=3)
    torch.testing.assert_close(other.prepare(rgb).pixel_values, engine.prepare(rgb).pixel_values)
    a = other.tokenizer(["potted plant"], padding="max_length", max_length=TEXT_LENGTH)
    b = engine.tokenizer(["potted plant"], padding="max_length", max_length=TEXT_LENGTH)
    assert a["input_ids"] == b["input_ids"] and a["attention_mask"] == b["attention_mask"]


def run(args):
    from fbseg_cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


def test_cli_folder_json_resume_and_clip_only_flags(sam3_dir, tmp_path):
    good = bad_folder(tmp_path / "in")
    out = tmp_path / "out"
    args = [
        "segment",
        str(tmp_path / "in"),
        "-c",
        "a,b",
        "-o",
        str(out),
        "--engine",
        "sam3",
        "--checkpoint",
        str(sam3_dir),
        "--json",
        "--overlay",
        "--masks",
        "per-class",
    ]
    r = run(args)
    assert r.exit_code == 4, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == len(good) and all(d["engine"] == "sam3" for d in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == len(good) and summary["failed"] == 3
    for stem, (h, w) in good.items():
        assert np.asarray(Image.open(out / f"{stem}.mask.png")).shape == (h, w)
        assert (out / f"{stem}.overlay.png").exists() and (out / f"{stem}.masks").is_dir()
    again = run(args)
    assert json.loads((out / "summary.json").read_text())["skipped"] == len(good)
    assert again.stdout == ""  # nothing segmented again
    for flag in (
        ["--host", "naclip"],
        ["--window", "224"],
        ["--no-feedback"],
        ["--compare"],
        ["--preset", "naclip"],
        ["--lam", "2"],
    ):
        r = run(
            [
                "segment",
                str(ASSETS / "cat.jpg"),
                "-c",
                "cat",
                "-o",
                str(tmp_path / "x"),
                "--engine",
                "sam3",
                *flag,
            ]
        )
        assert r.exit_code == 2 and "clip engine only" in r.output and flag[0] in r.output


def test_missing_extra_and_offline_fail_fast_with_one_line(sam3_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    r = run(
        [
            "segment",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat",
            "-o",
            str(tmp_path / "a"),
            "--engine",
            "sam3",
            "--checkpoint",
            str(sam3_dir),
        ]
    )
    assert r.exit_code == 2 and 'pip install "fbseg[sam3]"' in r.output
    monkeypatch.delitem(sys.modules, "transformers")
    from huggingface_hub import constants

    import fbseg.models.weights

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fbseg.models.weights.hub_reachable.cache_clear()
    r = run(
        [
            "segment",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat",
            "-o",
            str(tmp_path / "b"),
            "--engine",
            "sam3",
        ]
    )
    fbseg.models.weights.hub_reachable.cache_clear()
    assert r.exit_code == 3 and "facebook/sam3" in r.output and "Traceback" not in r.output


def test_eval_with_the_sam3_engine(sam3_dir, engine, tmp_path):
    from fbseg.eval.datasets import DATASETS, find_samples

    from helpers import make_dataset

    make_dataset("voc20", tmp_path / "data", n=2)
    r = run(
        [
            "eval",
            "--dataset",
            "voc20",
            "--root",
            str(tmp_path / "data"),
            "--engine",
            "sam3",
            "--checkpoint",
            str(sam3_dir),
            "--work-dir",
            str(tmp_path / "w"),
            "--json",
            "-q",
        ]
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["engine"] == "sam3" and report["images"] == 2
    spec = DATASETS.get("voc20")
    conf = np.zeros((20, 20), np.int64)
    for s in find_samples(spec, tmp_path / "data"):
        labels = engine.segment(s.image, spec.classes()).labels
        raw = np.asarray(Image.open(s.label)).astype(np.int64)
        gt = np.where((raw == 0) | (raw == 255), 255, raw - 1)
        for t, p in zip(gt.ravel(), labels.ravel()):
            if t != 255:
                conf[t, p] += 1
    ious = [
        conf[k, k] / u for k in range(20) if (u := conf[k].sum() + conf[:, k].sum() - conf[k, k])
    ]
    assert report["mIoU"] == pytest.approx(round(100 * np.mean(ious), 2), abs=0.006)


@pytest.mark.network
def test_real_sam3_finds_the_cat(tmp_path):
    """With the real, gated weights (licence accepted, logged in)."""
    from fbseg.pipeline.sam3 import Sam3Segmenter

    seg = Sam3Segmenter.from_pretrained(device="cpu", precision="fp32")
    result = seg.segment(ASSETS / "cat.jpg", "cat,rug")
    mask = np.asarray(Image.open(ASSETS.parent / "tests" / "data" / "cat_mask.png")).astype(bool)
    assert (result.labels[mask] == 0).mean() >= 0.8


def test_a_refused_gated_download_names_the_licence(tmp_path, monkeypatch):
    """The hub answers 401/403 for a gated repository whose licence the user has not
    accepted: one line, exit 3, and how to get access."""
    from transformers import Sam3Model

    class GatedRepoError(Exception):  # as huggingface_hub names it
        pass

    def refuse(*a, **k):
        raise GatedRepoError("Access to model facebook/sam3 is restricted. You must have access")

    monkeypatch.setattr(Sam3Model, "from_pretrained", refuse)
    r = run(
        ["segment", str(ASSETS / "cat.jpg"), "-c", "cat", "-o", str(tmp_path), "--engine", "sam3"]
    )
    assert r.exit_code == 3 and "licence not accepted or not logged in" in r.output
    assert "hf auth login" in r.output and "Traceback" not in r.output


def test_an_empty_batch_gives_no_results(engine):
    assert engine.segment_batch([], "cat,sofa") == []


def test_images_batched_and_names_halved_on_out_of_memory_change_nothing(engine, monkeypatch):
    """Several images encoded together, and name chunks halved when memory runs out, give
    what one image and one chunk at a time give."""
    images = [random_image(60 + 10 * i, 90, seed=i) for i in range(3)]
    classes = "cat; kitten,rug; carpet; mat,wall"
    one_by_one = [engine.segment(im, classes) for im in images]
    real = engine.model

    class Tight:  # the model, out of memory for more than one name per forward
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, **kw):
            if kw["attention_mask"].shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
            return real(**kw)

    monkeypatch.setattr(engine, "model", Tight())
    monkeypatch.setattr(engine, "names_per_forward", 4)
    batched = engine.segment_batch(images, classes)
    assert engine.names_per_forward == 1
    for a, b in zip(one_by_one, batched):
        np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-5)


def test_name_features_cached_on_disk_are_reused(sam3_dir, engine, text_cache):
    from fbseg.pipeline.sam3 import Sam3Segmenter

    assert engine.names_to_encode("lamp,shelf; lamp") == ["lamp", "shelf"]
    engine.segment(random_image(50, 70, seed=9), "lamp,shelf")
    assert engine.names_to_encode("shelf,lamp,desk") == ["desk"]
    again = Sam3Segmenter.from_pretrained(
        sam3_dir, device="cpu", precision="fp32", text_cache_dir=text_cache
    )
    assert again.text_cache.folder == engine.text_cache.folder
    assert again.names_to_encode("lamp,shelf") == []  # on disk
    r = again.segment(random_image(50, 70, seed=9), "lamp,shelf")
    assert again.text_cache.hits == 2 and again.text_cache.misses == 0
    np.testing.assert_allclose(
        r.probs, engine.segment(random_image(50, 70, seed=9), "lamp,shelf").probs, rtol=0, atol=1e-6
    )
