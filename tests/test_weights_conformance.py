"""The network fbseg builds for a pretrained tag is the one open_clip's pretrained table
declares for it (activation in both towers, input mean/std, image size), whatever open_clip's
own defaults are. Weights are random, laid out in the hub cache and loaded offline the user's
way; nothing is downloaded."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fbseg.errors import ConfigError
from fbseg.models.clip import BACKBONES
from fbseg.pipeline.segmenter import Segmenter

from conftest import random_image
from weights_cache import hub_repo_of, lay_in_hub_cache, random_state

SLOW = {"ViT-L-14", "ViT-H-14"}
NON_PROXY_HOST = "naclip"


def declared(model: str, tag: str) -> dict:
    """What open_clip's tables say the tag was trained as (a missing quick_gelu entry
    means the model config's own setting)."""
    import open_clip
    from open_clip import pretrained

    cfg = pretrained.get_pretrained_cfg(model, tag)
    model_cfg = open_clip.get_model_config(model)
    return {
        "quick_gelu": bool(cfg.get("quick_gelu", model_cfg.get("quick_gelu", False))),
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "image_size": model_cfg["vision_cfg"]["image_size"],
    }


def activations(module: torch.nn.Module) -> set[str]:
    """The class names of every MLP activation in a tower."""
    return {type(block.mlp.gelu).__name__ for block in module.resblocks}


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache, offline: only what a test lays there can load."""
    from huggingface_hub import constants

    import fbseg.models.weights

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fbseg.models.weights.hub_reachable.cache_clear()
    yield cache
    fbseg.models.weights.hub_reachable.cache_clear()


def assert_network_as_declared(seg: Segmenter, model: str, tag: str) -> None:
    want = declared(model, tag)
    expected = "QuickGELU" if want["quick_gelu"] else "GELU"
    assert activations(seg.clip.visual.transformer) == {expected}
    assert activations(seg.clip.transformer) == {expected}
    size = seg.clip.visual.image_size
    assert tuple(size if isinstance(size, tuple) else (size, size)) == (want["image_size"],) * 2
    # Normalisation as the tag declares it, computed here from the table.
    rgb = random_image(48, 64)
    prepared = seg.model_input(seg.prepare(rgb, short_side=None))
    mean = torch.tensor(want["mean"]).view(3, 1, 1)
    std = torch.tensor(want["std"]).view(3, 1, 1)
    naive = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0 - mean) / std
    torch.testing.assert_close(prepared, naive, rtol=0, atol=1e-5)


def _cases():
    for name, spec in BACKBONES:
        yield pytest.param(
            name,
            spec.pretrained,
            id=f"{name}/{spec.pretrained}",
            marks=[pytest.mark.slow] if name in SLOW else [],
        )
    # A supported tag whose input statistics are not CLIP's own.
    yield pytest.param(
        "ViT-L-14", "laion2b_s32b_b82k", id="ViT-L-14/laion2b_s32b_b82k", marks=[pytest.mark.slow]
    )


@pytest.mark.parametrize("model,tag", list(_cases()))
def test_default_tag_builds_the_declared_network(offline_hub, model, tag):
    lay_in_hub_cache(offline_hub, hub_repo_of(model, tag), random_state(model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = Segmenter.from_pretrained(
            model,
            pretrained=tag,
            host=NON_PROXY_HOST,
            device="cpu",
            precision="fp32",
            text_cache=False,
        )
    assert not [w for w in caught if "QuickGELU" in str(w.message)]
    assert_network_as_declared(seg, model, tag)


def test_default_segmenter_is_quickgelu(offline_hub, dino_ckpt):
    """The default command's model, ViT-B-16/openai, from the cache: QuickGELU everywhere."""
    from fbseg.models.clip import DEFAULT_BACKBONE, default_pretrained

    tag = default_pretrained(DEFAULT_BACKBONE)
    lay_in_hub_cache(
        offline_hub, hub_repo_of(DEFAULT_BACKBONE, tag), random_state(DEFAULT_BACKBONE)
    )
    seg = Segmenter.from_pretrained(proxy_checkpoint=dino_ckpt, device="cpu", text_cache=False)
    assert activations(seg.clip.visual.transformer) == {"QuickGELU"}
    assert activations(seg.clip.transformer) == {"QuickGELU"}


def test_file_declared_as_tag_is_the_tag_network(offline_hub, tmp_path):
    """``--checkpoint FILE --pretrained openai``: the same network, the same numbers as the
    cached tag with those weights; a plain file keeps the model name's architecture."""
    state = random_state("ViT-B-16")
    path = tmp_path / "b16.pt"
    torch.save(state, path)
    lay_in_hub_cache(offline_hub, hub_repo_of("ViT-B-16", "openai"), state)
    kw = dict(host=NON_PROXY_HOST, device="cpu", precision="fp32", text_cache=False)
    from_tag = Segmenter.from_pretrained("ViT-B-16", pretrained="openai", **kw)
    as_tag = Segmenter.from_pretrained("ViT-B-16", pretrained="openai", checkpoint=path, **kw)
    assert_network_as_declared(as_tag, "ViT-B-16", "openai")
    # The hub copy was stored in fp16: compare against the file rounded the same way.
    torch.save({k: v.half().float() for k, v in state.items()}, path)
    as_tag = Segmenter.from_pretrained("ViT-B-16", pretrained="openai", checkpoint=path, **kw)
    rgb = random_image(120, 90)
    a = from_tag.segment(rgb, "cat,floor", window=224, stride=112, short_side=224)
    b = as_tag.segment(rgb, "cat,floor", window=224, stride=112, short_side=224)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
    plain = Segmenter.from_pretrained("ViT-B-16", checkpoint=path, **kw)
    assert activations(plain.clip.visual.transformer) == {"GELU"}
    quick = Segmenter.from_pretrained("ViT-B-16-quickgelu", checkpoint=path, **kw)
    assert activations(quick.clip.visual.transformer) == {"QuickGELU"}
    assert activations(quick.clip.transformer) == {"QuickGELU"}


# the file is written the way OpenAI's were; PyTorch now warns on every torch.jit.script
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_openai_torchscript_file_loads_as_quickgelu(tmp_path):
    """OpenAI's original ``.pt`` files are TorchScript archives of a QuickGELU model."""
    import open_clip

    torch.manual_seed(0)
    source = open_clip.create_model("ViT-B-16", force_quick_gelu=True).eval()
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.script(source).save(str(path))
    seg = Segmenter.from_pretrained(
        "ViT-B-16",
        checkpoint=path,
        host=NON_PROXY_HOST,
        device="cpu",
        precision="fp32",
        text_cache=False,
    )
    assert activations(seg.clip.visual.transformer) == {"QuickGELU"}
    assert activations(seg.clip.transformer) == {"QuickGELU"}
    for key, value in source.state_dict().items():
        torch.testing.assert_close(seg.clip.state_dict()[key], value, rtol=0, atol=0)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(seg.clip.encode_image(x), source.encode_image(x))


@pytest.mark.parametrize(
    "model", ["ViT-B-16-SigLIP", "RN50", "coca_ViT-B-32", "ViT-L-14-CLIPA", "convnext_base"]
)
def test_unfaithful_architectures_refused_before_download(offline_hub, monkeypatch, model):
    import open_clip

    def no_build(*a, **k):
        raise AssertionError("the model must be refused before it is built")

    tag = open_clip.list_pretrained_tags_by_model(model)[0]
    monkeypatch.setattr(open_clip, "create_model", no_build)
    with pytest.raises(ConfigError) as info:
        Segmenter.from_pretrained(model, pretrained=tag, host=NON_PROXY_HOST, device="cpu")
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    assert "fbseg runs" in str(info.value)  # says why, not a generic failure


def _tiny_pair(tiny_ckpt):
    """The same tiny weights built as GELU and as QuickGELU (what the fix changes)."""
    import open_clip

    from conftest import TINY

    state = torch.load(tiny_ckpt, weights_only=True)
    gelu = open_clip.create_model(TINY)
    quick = open_clip.create_model(TINY, force_quick_gelu=True)
    gelu.load_state_dict(state)
    quick.load_state_dict(state)
    return gelu, quick


def test_a_changed_network_never_reads_an_old_cache(tiny_ckpt, tmp_path):
    """Text embeddings and eval counts are keyed by the network, not only the weights' name."""
    from fbseg.eval.datasets import DATASETS
    from fbseg.eval.evaluate import run_key

    from conftest import TINY

    gelu, quick = _tiny_pair(tiny_ckpt)
    kw = dict(
        model_name=TINY,
        host=NON_PROXY_HOST,
        device="cpu",
        precision="fp32",
        weights_id="tiny|openai",
        text_cache_dir=tmp_path,
    )
    old = Segmenter(gelu, **kw)
    old.encode_text("cat,floor")  # written to the disk cache
    new = Segmenter(quick, **kw)
    assert new.text_cache.folder != old.text_cache.folder
    fresh = new.encode_text("cat,floor")
    assert new.text_cache.hits == 0 and new.text_cache.misses == 2
    from fbseg.models.text import encode_names

    expected = encode_names(quick, new.tokenizer, ["cat", "floor"], torch.device("cpu"))
    torch.testing.assert_close(fresh, expected)
    assert not torch.allclose(fresh, old.encode_text("cat,floor"))
    spec = DATASETS.get("voc20")
    assert run_key(old.identity(), spec, spec.config()) != run_key(
        new.identity(), spec, spec.config()
    )
    assert old.identity()["network"]["activation"] == "gelu"
    assert new.identity()["network"]["activation"] == "quick_gelu"


def test_refused_architecture_is_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from fbseg_cli import app

    from conftest import ASSETS

    r = CliRunner().invoke(
        app,
        [
            "segment",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat,rug",
            "-o",
            str(tmp_path),
            "--model",
            "ViT-B-16-SigLIP",
            "--pretrained",
            "webli",
            "--host",
            NON_PROXY_HOST,
        ],
    )
    assert r.exit_code == 2
    assert "ViT-B-16-SigLIP" in r.output and "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "timm image tower" in errors[0]
