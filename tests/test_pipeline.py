"""Segmenter.segment end to end against the reference's forward_slide written naively."""

import re

import numpy as np
import pytest
import torch

from fbseg.hosts import HOSTS
from fbseg.pipeline.segmenter import Segmenter
from fbseg.pipeline.window import protocol_size, window_boxes

import naive
from conftest import TINY, random_image, random_text
from helpers import normalised, with_text


@pytest.fixture(scope="module")
def tiny_seg(tiny_clip):
    return Segmenter(tiny_clip, model_name=TINY, host="naclip", device="cpu", precision="fp32")


@pytest.mark.parametrize("host", [name for name, entry in HOSTS if not entry.needs_proxy])
@pytest.mark.parametrize("hw", [(70, 130), (150, 90)])
@pytest.mark.parametrize(
    ("window", "stride"), [(64, 32), (56, 28)], ids=["whole-crops", "padded-crops"]
)
def test_segment_matches_naive_slide(tiny_clip, host, hw, window, stride):
    """Against the reference's forward_slide, written out: the image normalised whole, each
    crop cut from it and padded with zeros (windows of 56 → 64) on the patch multiple."""
    seg = Segmenter(tiny_clip, model_name=TINY, host=host, device="cpu", precision="fp32")
    classes = ["cat", "sofa; couch", "floor"]
    with_text(seg, classes, 32)
    rgb = random_image(*hw)
    kw = dict(short_side=64, window=window, stride=stride, logit_scale=40.0)
    res = seg.segment(rgb, classes, feedback=False, **kw)
    size = protocol_size(*hw, 64)
    img = normalised(rgb, size)
    text = torch.from_numpy(
        np.stack([seg.text_cache.memory[n] for n in ["cat", "sofa", "couch", "floor"]])
    )

    def naive_probs(feedback: bool) -> torch.Tensor:
        with torch.no_grad():
            return naive.slide_probs(
                lambda c: naive.crop_logits(host, tiny_clip.visual, c, text, feedback, 3.0),
                img,
                window,
                stride,
                16,
                hw,
                40.0,
                [0, 1, 1, 2],
            )

    expected = naive_probs(False)
    assert res.labels.shape == hw and res.probs.shape == (3, *hw)
    np.testing.assert_allclose(res.probs, expected.numpy(), rtol=0, atol=1e-5)
    res_fb = seg.segment(rgb, classes, feedback=True, **kw)
    expected_fb = naive_probs(True)
    # FSA on (docs/method.md, "the cut is discontinuous"): labels agree on ≥ 99.9% of pixels, probabilities close.
    agree = (res_fb.labels == expected_fb.argmax(0).numpy()).mean()
    assert agree >= 0.999
    assert np.abs(res_fb.probs - expected_fb.numpy()).max() < 1e-3


def test_one_window_covering_the_image_equals_the_plain_forward(tiny_seg, tiny_clip):
    from fbseg.hosts import build_host
    from fbseg.pipeline.crop import CropModel, crop_logits

    classes = ["a", "b"]
    with_text(tiny_seg, classes, 32)
    rgb = random_image(64, 96)
    res = tiny_seg.segment(rgb, classes, short_side=None, window=96, stride=96)
    img = normalised(rgb, (64, 96))[None]
    text = torch.from_numpy(np.stack([tiny_seg.text_cache.memory[n] for n in classes]))
    grid = crop_logits(
        CropModel(tiny_clip.visual, build_host("naclip")),
        img,
        text,
        feedback=True,
        lam=3.0,
        window=96,
    )
    up = torch.nn.functional.interpolate(grid, size=(64, 96), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(res.probs, torch.softmax(up[0] * 40, 0).numpy(), rtol=0, atol=1e-6)


def test_windows_follow_the_reference_positions():
    assert window_boxes(336, 505, 336, 112) == [
        (0, 336, 0, 336),
        (0, 336, 112, 448),
        (0, 336, 169, 505),
    ]
    assert window_boxes(200, 300, 336, 112) == [(0, 200, 0, 300)]  # smaller than the window
    boxes = window_boxes(600, 400, 336, 112)
    assert boxes[-1] == (264, 600, 64, 400) and len(boxes) == 4 * 2


@pytest.mark.parametrize("window", [64, None])
def test_stitching_averages_each_pixel_over_the_windows_that_cover_it(monkeypatch, window):
    """Each window's logits upsampled to its crop and placed at its box, summed and divided by
    a count of boxes per pixel made here — whatever the number of windows upsampled
    together (``STITCH_BYTES``) or per forward."""
    from fbseg.pipeline import window as window_mod

    g = torch.Generator().manual_seed(3)
    images = [torch.randn(3, h, w, generator=g) for h, w in [(100, 37), (64, 64), (65, 130)]]
    per_crop = {}

    def crop_fn(crops):  # deterministic in the crop: the same logits however crops are batched
        out = []
        for crop in crops:
            key = crop.sum().item()
            if key not in per_crop:
                per_crop[key] = torch.randn(
                    5, crop.shape[1] // 14, crop.shape[2] // 14, generator=g
                )
            out.append(per_crop[key])
        return torch.stack(out)

    def stitch(windows_per_forward, few_shapes=False):
        return window_mod.slide_many(
            images,
            crop_fn,
            window=window,
            stride=24,
            pad_multiple=14,
            windows_per_forward=windows_per_forward,
            few_shapes=few_shapes,
        )

    first = stitch(3)
    assert window_mod.slide_many([], crop_fn, window=window, stride=24, pad_multiple=14) == []
    monkeypatch.setattr(window_mod, "STITCH_BYTES", 1)  # one window per upsampling
    for other in (stitch(3), stitch(1), stitch(4, few_shapes=True)):
        assert all(torch.equal(a, b) for a, b in zip(first, other))
    for image, result in zip(images, first):
        h, w = image.shape[1:]
        boxes = [(0, h, 0, w)] if window is None else window_boxes(h, w, window, 24)
        total = torch.zeros(5, h, w)
        count = torch.zeros(h, w)
        for y1, y2, x1, x2 in boxes:
            crop = image[:, y1:y2, x1:x2]
            ph, pw = (-crop.shape[1]) % 14, (-crop.shape[2]) % 14
            if window is None:
                ph = pw = 0
            padded = torch.nn.functional.pad(crop, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            up = torch.nn.functional.interpolate(
                per_crop[padded.sum().item()][None],
                size=padded.shape[1:],
                mode="bilinear",
                align_corners=False,
            )[0]
            total[:, y1:y2, x1:x2] += up[
                :, ph // 2 : ph // 2 + y2 - y1, pw // 2 : pw // 2 + x2 - x1
            ]
            count[y1:y2, x1:x2] += 1
        assert count.min() >= 1
        torch.testing.assert_close(result, total / count, rtol=0, atol=1e-6)


def binary_parts(n: int) -> list[int]:
    """n as a sum of distinct powers of two, largest first (its binary digits)."""
    return [2**b for b in reversed(range(n.bit_length())) if n & 2**b]


@pytest.mark.parametrize("per_forward", [1, 3, 8, 24, 32])
def test_few_shapes_runs_the_windows_left_in_powers_of_two(per_forward):
    """Full batches first, then what is left in its binary parts; without ``few_shapes`` one
    batch of what is left. Either way every window once; with it, a crop size's batches take
    only the full size and powers of two below it, whatever the number of windows."""
    from fbseg.pipeline.window import next_batch

    def batches(n, few_shapes):
        sizes = []
        while n > sum(sizes):
            sizes.append(next_batch(n - sum(sizes), per_forward, few_shapes))
        return sizes

    shapes = set()
    for n in range(100):
        full, left = divmod(n, per_forward)
        assert batches(n, False) == [per_forward] * full + ([left] if left else [])
        assert batches(n, True) == [per_forward] * full + binary_parts(left)
        shapes.update(batches(n, True))
    powers_below = {2**k for k in range(8) if 2**k < per_forward}
    assert shapes == {per_forward} | powers_below


def test_few_shapes_batches_each_crop_size_on_its_own():
    """Windows of two crop sizes from three images: each size's windows are batched apart,
    the remainder of each in powers of two."""
    from fbseg.pipeline import window as window_mod

    g = torch.Generator().manual_seed(0)
    # 64×160: 1×5 windows of 64²; 64×64: one; 40×64: 1×1 windows of 40×64 (height under 64)
    images = [torch.randn(3, 64, 160, generator=g), torch.randn(3, 64, 64, generator=g)]
    images += [torch.randn(3, 40, 64, generator=g)] * 3
    seen: list[tuple[int, int, int]] = []

    def crop_fn(crops):
        seen.append(tuple(crops.shape[i] for i in (0, 2, 3)))
        return crops.mean(1, keepdim=True)[:, :, ::16, ::16]

    window_mod.slide_many(
        images,
        crop_fn,
        window=64,
        stride=24,
        pad_multiple=16,
        windows_per_forward=4,
        few_shapes=True,
    )
    square = len(window_boxes(64, 160, 64, 24)) + 1
    assert [b for b, h, w in seen if (h, w) == (64, 64)] == [4] + binary_parts(square - 4)
    assert [b for b, h, w in seen if (h, w) == (48, 64)] == binary_parts(3)  # padded to 16


def test_protocol_size_is_mmseg_keep_ratio():
    assert protocol_size(300, 451, 336) == (336, 505)
    assert protocol_size(100, 4000, 336) == (51, 2048)  # long side capped at 2048


def test_threshold_sends_low_confidence_to_the_first_class(tiny_seg):
    classes = ["background", "x", "y"]
    with_text(tiny_seg, classes, 32)
    rgb = random_image(64, 64)
    free = tiny_seg.segment(rgb, classes, short_side=64, window=64, stride=32)
    top = free.probs.max(axis=0)
    thr = float(np.median(top))
    strict = tiny_seg.segment(rgb, classes, short_side=64, window=64, stride=32, prob_threshold=thr)
    np.testing.assert_array_equal(free.probs, strict.probs)
    assert (strict.labels[top < thr] == 0).all()
    np.testing.assert_array_equal(strict.labels[top >= thr], free.labels[top >= thr])
    assert (free.labels[top < thr] != 0).any()


def test_image_inputs_path_pil_array_agree(tiny_seg, tmp_path):
    from PIL import Image

    with_text(tiny_seg, ["a", "b"], 32)
    rgb = random_image(60, 90)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    a = tiny_seg.segment(rgb, "a,b", short_side=64, window=64, stride=32)
    b = tiny_seg.segment(tmp_path / "x.png", "a,b", short_side=64, window=64, stride=32)
    c = tiny_seg.segment(Image.fromarray(rgb), "a,b", short_side=64, window=64, stride=32)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.probs, c.probs)


def test_text_embedding_is_the_template_mean(tiny_clip, tmp_path):
    import open_clip
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    seg = Segmenter(
        tiny_clip,
        model_name=TINY,
        host="naclip",
        device="cpu",
        weights_id="tiny-test",
        text_cache_dir=tmp_path,
    )
    emb = seg.encode_text(["cat; kitten", "sofa"])
    tok = open_clip.get_tokenizer(TINY)
    with torch.no_grad():
        for row, name in zip(emb, ["cat", "kitten", "sofa"]):
            per = [tiny_clip.encode_text(tok([t(name)]))[0] for t in OPENAI_IMAGENET_TEMPLATES]
            mean = torch.stack([p / p.norm() for p in per]).mean(0)
            torch.testing.assert_close(row, mean / mean.norm(), rtol=0, atol=1e-5)
    # a second Segmenter finds every name in the disk cache
    again = Segmenter(
        tiny_clip,
        model_name=TINY,
        host="naclip",
        device="cpu",
        weights_id="tiny-test",
        text_cache_dir=tmp_path,
    )
    assert again.names_to_encode(["cat; kitten", "sofa", "lamp"]) == ["lamp"]
    torch.testing.assert_close(again.encode_text(["cat; kitten", "sofa"]), emb)
    assert again.text_cache.hits == 3 and again.text_cache.misses == 0


def _full_and_cut(clip, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """open_clip's ``encode_text`` over the whole context, ``encode_prompts``, and the
    sequence lengths the text tower's transformer got in ``encode_prompts``."""
    from fbseg.models.text import encode_prompts

    seen: list[int] = []
    with torch.inference_mode():
        full = clip.encode_text(tokens)
        hook = clip.transformer.register_forward_pre_hook(
            lambda module, args: seen.append(args[0].shape[1])
        )
        try:
            cut = encode_prompts(clip, tokens)
        finally:
            hook.remove()
    return full, cut, seen


def _template_tokens(model: str, names: list[str]) -> torch.Tensor:
    import open_clip
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    tok = open_clip.get_tokenizer(model)
    return tok([t(name) for name in names for t in OPENAI_IMAGENET_TEMPLATES])


def _fresh_tiny_clip(tiny_ckpt):
    """A tiny CLIP of its own, for a test that changes its text tower."""
    from fbseg.models.clip import load_clip

    return load_clip(TINY, None, tiny_ckpt)


@pytest.mark.parametrize("pool", ["argmax", "eos"])
def test_prompts_run_on_the_positions_that_decide_them(tiny_ckpt, pool):
    """open_clip's encode_text over the whole context, against encode_prompts: the same
    embeddings, with the tower run on positions up to the last end-of-text token only."""
    tiny_clip = _fresh_tiny_clip(tiny_ckpt)
    tokens = _template_tokens(TINY, ["cat", "a bright red double-decker bus parked outside"])
    if pool == "eos":
        tiny_clip.text_pool_type = "eos"
        tiny_clip.text_eos_id = int(tokens.max())
    last_eot = max(row.nonzero().max().item() for row in tokens)  # pads are 0
    full, cut, seen = _full_and_cut(tiny_clip, tokens)
    assert seen == [last_eot + 1] and last_eot + 1 < tokens.shape[1]
    torch.testing.assert_close(cut, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("change", ["mask sees later positions", "pools the last position"])
def test_prompts_keep_the_whole_context_where_later_positions_count(tiny_ckpt, change):
    """A tower whose mask lets a position see later ones, or that pools the last position,
    depends on the padding: it runs on all 77 positions, as open_clip runs it."""
    tiny_clip = _fresh_tiny_clip(tiny_ckpt)
    tokens = _template_tokens(TINY, ["cat"])[:8]
    if change == "mask sees later positions":
        tiny_clip.attn_mask[3, 60] = 0.0  # one early row sees one padding position
    else:
        tiny_clip.text_pool_type = "last"
    full, cut, seen = _full_and_cut(tiny_clip, tokens)
    assert seen == [tokens.shape[1]]
    torch.testing.assert_close(cut, full, rtol=0, atol=0)


def test_vit_b16_text_tower_embeds_prompts_as_open_clip_does(b16_ckpt):
    """The real ViT-B-16 text tower (random weights, loaded from its file): the cut applies
    and gives open_clip's embeddings of the 80 templates."""
    from fbseg.models.clip import load_clip
    from fbseg.models.text import encode_prompts, pooled_length

    clip = load_clip("ViT-B-16", None, b16_ckpt)
    tokens = _template_tokens("ViT-B-16", ["sofa"])
    with torch.inference_mode():
        full = torch.nn.functional.normalize(clip.encode_text(tokens), dim=-1)
        cut = torch.nn.functional.normalize(encode_prompts(clip, tokens), dim=-1)
    assert pooled_length(clip, tokens) == max(row.nonzero().max().item() for row in tokens) + 1
    torch.testing.assert_close(cut, full, rtol=0, atol=1e-5)


def test_prompts_are_grouped_by_length_and_each_encoded_once(tiny_clip):
    """Each group holds prompts of one length (last non-padding position), at most ``chunk``;
    every prompt is in one group; the names' embeddings do not depend on the chunk size, and
    each prompt's embedding lands on its own row (against open_clip, prompt by prompt)."""
    import open_clip

    from fbseg.models.text import encode_names, rows_by_length

    names = ["cat", "a bright red double-decker bus parked outside", "sofa"]
    tokens = _template_tokens(TINY, names)
    groups = rows_by_length(tokens, chunk=7)
    ends = [row.nonzero().max().item() for row in tokens]
    assert sorted(i for g in groups for i in g.tolist()) == list(range(len(tokens)))
    assert all(len(g) <= 7 and len({ends[i] for i in g.tolist()}) == 1 for g in groups)
    assert len(groups) > len(set(ends))  # some lengths needed several chunks

    tok = open_clip.get_tokenizer(TINY)
    small = encode_names(tiny_clip, tok, names, torch.device("cpu"), chunk=7)
    whole = encode_names(tiny_clip, tok, names, torch.device("cpu"))
    torch.testing.assert_close(small, whole, rtol=0, atol=1e-6)
    with torch.inference_mode():
        one_by_one = torch.nn.functional.normalize(
            torch.cat([tiny_clip.encode_text(tokens[i : i + 1]) for i in range(len(tokens))]),
            dim=-1,
        )
    expected = torch.nn.functional.normalize(one_by_one.reshape(3, 80, -1).mean(1), dim=-1)
    torch.testing.assert_close(whole, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", ["ViT-B-16", "ViT-L-14", "ViT-H-14"])
def test_default_backbones_declare_a_causal_end_of_text_pooled_tower(model):
    """What the cut relies on, as open_clip's configs declare it for the three backbones:
    a causal mask and pooling at the end-of-text token (the highest token id)."""
    import open_clip
    from open_clip.model import CLIPTextCfg

    text_cfg = CLIPTextCfg(**open_clip.get_model_config(model)["text_cfg"])
    assert text_cfg.pool_type == "argmax" and not text_cfg.no_causal_mask


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ViT-L-14", "ViT-H-14"])
def test_large_backbones_build_load_and_match(tmp_path, model):
    """The real ViT-L/14 and ViT-H/14 architectures: saved, loaded back, one host checked."""
    from fbseg.hosts import build_host
    from fbseg.models.clip import load_clip
    from fbseg.pipeline.crop import CropModel, crop_logits

    from conftest import save_random_clip

    visual = load_clip(model, None, save_random_clip(model, tmp_path / "w.pt")).visual
    crop = torch.randn(1, 3, 112, 140, generator=torch.Generator().manual_seed(0))
    text = random_text(3, visual.proj.shape[1])
    ours = crop_logits(
        CropModel(visual, build_host("clearclip")), crop, text, feedback=False, lam=3.0, window=140
    )[0]
    with torch.no_grad():
        expected = naive.crop_logits("clearclip", visual, crop[0], text, False, 3.0)
    assert ours.shape == (3, 8, 10)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"proxy": "dinoo"}, "unknown proxy 'dinoo'"),
        ({"short_side": 8}, "short side must be ≥ the patch size (16)"),
        ({"window": 8, "stride": 4}, "window must be ≥ the patch size (16)"),
        ({"model": "ViT-L-14", "window": 12, "stride": 4}, "window must be ≥ the patch size (14)"),
        (
            {"proxy_checkpoint": "missing-dino.pt"},
            "--proxy-checkpoint missing-dino.pt: no such file",
        ),
    ],
)
def test_from_pretrained_refuses_bad_settings_before_loading(monkeypatch, kwargs, text):
    """From Python too, settings no model can run fail before weights are read or fetched:
    the patch size comes from open_clip's config of the model named."""
    import fbseg.pipeline.segmenter
    from fbseg.errors import ConfigError, WeightsUnavailableError

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(fbseg.pipeline.segmenter, "load_clip", no_loading)
    with pytest.raises((ConfigError, WeightsUnavailableError), match=re.escape(text)):
        Segmenter.from_pretrained(device="cpu", **kwargs)
