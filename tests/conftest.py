"""Shared fixtures: seeds, a tiny open_clip architecture, random real-architecture weights
saved to files and loaded back the way a user loads a checkpoint."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
ASSETS = HERE.parent / "assets"
TINY = "fbseg-tiny-vit"


def pytest_configure(config):
    import open_clip

    open_clip.add_model_config(HERE / "configs")
    torch.set_num_threads(max(1, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """Tests that need real weights run only when asked for by name (``-m network``), even
    when another ``-m`` expression replaces the default one."""
    if "network" in (config.getoption("-m") or "").replace("not network", ""):
        return
    skip = pytest.mark.skip(reason="needs real weights: run with -m network")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seed_all():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test's text-embedding cache lives in the session's temporary folder."""
    monkeypatch.setenv("FBSEG_CACHE", str(tmp_path_factory.getbasetemp() / "fbseg-cache"))


def save_random_clip(model: str, path: Path, seed: int = 0) -> Path:
    import open_clip

    torch.manual_seed(seed)
    torch.save(open_clip.create_model(model).state_dict(), path)
    return path


def save_random_timm(name: str, path: Path, seed: int = 1) -> Path:
    import timm

    torch.manual_seed(seed)
    torch.save(timm.create_model(name, pretrained=False).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_random_clip(TINY, tmp_path_factory.mktemp("w") / "tiny.pt")


@pytest.fixture(scope="session")
def b16_ckpt(tmp_path_factory) -> Path:
    return save_random_clip("ViT-B-16", tmp_path_factory.mktemp("w") / "vit_b16.pt")


@pytest.fixture(scope="session")
def dino_ckpt(tmp_path_factory) -> Path:
    return save_random_timm("vit_base_patch8_224.dino", tmp_path_factory.mktemp("w") / "dino.pt")


@pytest.fixture(scope="session")
def b16_visual(b16_ckpt):
    """The image tower of a random ViT-B-16 loaded from its file, fp32, eval."""
    from fbseg.models.clip import load_clip

    return load_clip("ViT-B-16", None, b16_ckpt).visual


@pytest.fixture(scope="session")
def tiny_clip(tiny_ckpt):
    from fbseg.models.clip import load_clip

    return load_clip(TINY, None, tiny_ckpt)


def random_text(n: int, dim: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, dim, generator=g)
    return t / t.norm(dim=-1, keepdim=True)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (blobs), so neighbouring patches are related."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(2, h // 40), max(2, w // 40), generator=g)
    big = torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    return (big[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def interrupt_on_call(monkeypatch, owner, name: str, n: int) -> dict:
    """Make ``owner.name`` raise KeyboardInterrupt on its n-th call (as Ctrl-C would);
    returns the call counter."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(owner, name, wrapper)
    return calls
