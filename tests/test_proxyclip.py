"""ProxyCLIP: proxy features as the reference takes them, the proxy attention and FSA on it
against naive.py, on random real proxy architectures loaded from files."""

import pytest
import torch
import torch.nn.functional as F

from fbseg.hosts.proxyclip import ProxyCLIP
from fbseg.models.proxies import PROXIES, load_proxy, proxy_features, proxy_input
from fbseg.pipeline.crop import CropModel, crop_logits

import naive
from conftest import random_text, save_random_timm


@pytest.fixture(scope="module")
def dino(dino_ckpt):
    return load_proxy(PROXIES.get("dino"), dino_ckpt)


@pytest.fixture(scope="module")
def dinov2_ckpt(tmp_path_factory):
    return save_random_timm(
        "vit_base_patch14_reg4_dinov2.lvd142m", tmp_path_factory.mktemp("w") / "dinov2.pt"
    )


def _crop(h, w, seed=0):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_dino_features_native_size_equal_timm_forward(dino):
    crop = _crop(224, 224)
    ours = proxy_features(dino, PROXIES.get("dino"), crop, 224)
    with torch.no_grad():
        timm_tokens = dino.forward_features(proxy_input(crop))[:, 1:]
    assert ours.shape == (1, 768, 28, 28)
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), timm_tokens, rtol=0, atol=1e-5)


def test_dino_features_use_the_plus01_resize_on_non_square_crops(dino):
    crop = _crop(336, 224)
    ours = proxy_features(dino, PROXIES.get("dino"), crop, 336)
    assert ours.shape == (1, 768, 42, 28)
    with torch.no_grad():
        x = proxy_input(crop)
        tokens = dino.patch_embed.proj(x).flatten(2).transpose(1, 2)
        pos = naive.pos_table(dino.pos_embed[0], 42, 28)
        tokens = torch.cat([dino.cls_token[0], tokens[0]]) + pos
        for blk in dino.blocks:
            tokens = blk(tokens[None])[0]
        expected = dino.norm(tokens)[1:]
    torch.testing.assert_close(ours[0].flatten(1).T, expected, rtol=0, atol=1e-5)


def test_dinov2_features_equal_timm_dynamic_size(dinov2_ckpt):
    import timm

    spec = PROXIES.get("dinov2")
    ours_model = load_proxy(spec, dinov2_ckpt)
    ref = timm.create_model(spec.timm_name, pretrained=False, dynamic_img_size=True)
    ref.load_state_dict(torch.load(dinov2_ckpt))
    crop = _crop(336, 224)
    ours = proxy_features(ours_model, spec, crop, 336)
    assert ours.shape == (1, 768, 24, 16)
    with torch.no_grad():
        expected = ref.eval().forward_features(proxy_input(crop))[:, ref.num_prefix_tokens :]
    torch.testing.assert_close(ours[0].flatten(1).T, expected[0], rtol=0, atol=1e-4)


def test_proxy_attention_matches_naive_and_never_nans():
    from fbseg.hosts.attention import proxy_attention

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 32, 50, generator=g)
    A = proxy_attention(feats, 1.2, 3.0)
    assert A.shape == (2, 1, 50, 50)
    for b in range(2):
        torch.testing.assert_close(A[b, 0], naive.proxy_attention(feats[b]), rtol=0, atol=1e-6)
    # μ is per crop: a batch gives the same rows as crops one at a time
    torch.testing.assert_close(proxy_attention(feats[1:], 1.2, 3.0)[0], A[1], rtol=0, atol=1e-7)
    # all-identical features: β·μ = 1.2 > 1 would empty every row in the reference (NaN)
    same = torch.ones(1, 8, 10)
    A_same = proxy_attention(same, 1.2, 3.0)
    assert torch.isfinite(A_same).all()
    torch.testing.assert_close(A_same[0, 0], torch.eye(10))


@pytest.mark.parametrize("size", [(112, 112), (168, 112)])
def test_proxyclip_crop_matches_naive(b16_visual, dino, size):
    """(168, 112) is a non-square crop: the reference computes the proxy grid from the
    height twice and swaps the CLIP grid's sides, so it cannot run it."""
    text = random_text(5, 512)
    crop = _crop(*size, seed=2)
    spec = PROXIES.get("dino")
    model = CropModel(b16_visual, ProxyCLIP(dino, spec))
    feats = proxy_features(dino, spec, crop, size[1])
    assert feats.shape[-2:] == (size[0] // 8, size[1] // 8)
    with torch.no_grad():
        expected = naive.crop_logits("proxyclip", b16_visual, crop[0], text, False, 3.0, feats[0])
        expected_fb = naive.crop_logits("proxyclip", b16_visual, crop[0], text, True, 3.0, feats[0])
    ours = crop_logits(model, crop, text, feedback=False, lam=3.0, window=size[1])[0]
    assert ours.shape == (5, size[0] // 8, size[1] // 8)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    ours_fb = crop_logits(model, crop, text, feedback=True, lam=3.0, window=size[1])[0]
    agree = (ours_fb.argmax(0) == expected_fb.argmax(0)).float().mean()
    assert agree >= 0.99
    assert (ours_fb - expected_fb).abs().mean() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name,grid", [("sam", (64, 64)), ("mae", (7, 7))])
def test_sam_and_mae_proxies(tmp_path, b16_visual, name, grid):
    """SAM sees the crop at 1024², MAE at the window size; both give ProxyCLIP logits
    on their own grid that match the naive host."""
    spec = PROXIES.get(name)
    proxy = load_proxy(spec, save_random_timm(spec.timm_name, tmp_path / f"{name}.pt"))
    crop = _crop(112, 112, seed=4)
    feats = proxy_features(proxy, spec, crop, 112)
    assert feats.shape[-2:] == grid
    if name == "mae":  # size-based bicubic table resize, final norm, CLS dropped
        with torch.no_grad():
            x = F.interpolate(
                proxy_input(crop), size=(112, 112), mode="bilinear", align_corners=False
            )
            t = proxy.patch_embed.proj(x).flatten(2).transpose(1, 2)[0]
            table = proxy.pos_embed[0, 1:].reshape(14, 14, -1).permute(2, 0, 1)[None]
            table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
            t = t + table[0].permute(1, 2, 0).reshape(-1, t.shape[-1])
            t = torch.cat([proxy.cls_token[0] + proxy.pos_embed[0, :1], t])
            for blk in proxy.blocks:
                t = blk(t[None])[0]
            expected = proxy.norm(t)[1:]
        torch.testing.assert_close(feats[0].flatten(1).T, expected, rtol=0, atol=1e-4)
    text = random_text(3, 512)
    model = CropModel(b16_visual, ProxyCLIP(proxy, spec))
    with torch.no_grad():
        expected = naive.crop_logits("proxyclip", b16_visual, crop[0], text, False, 4.5, feats[0])
    ours = crop_logits(model, crop, text, feedback=False, lam=4.5, window=112)[0]
    # The proxy mask S > βμ is a hard cut: with SAM's 4096 near-alike random features some
    # entries sit within float noise of it, and where the two sums round to opposite sides
    # that pixel's attention row (it alone: no FSA here) keeps or drops an entry. Every
    # other pixel must agree to float noise.
    f = feats[0].flatten(1)
    f = f / f.norm(dim=0, keepdim=True)
    S = f.T @ f
    near_cut = ((S - 1.2 * S.mean()).abs() < 1e-5).any(1).reshape(grid)  # β of naive.py
    assert near_cut.float().mean() < 0.3  # most pixels are checked exactly
    differ = ((ours - expected).abs() > 1e-5).any(0)
    assert not (differ & ~near_cut).any()
    assert (ours - expected).abs().mean() < 1e-6
