"""With the real weights (downloaded once into the Hugging Face cache): the default model
recognises a cat and segments it. Skipped unless run with ``-m network``:

    .venv/bin/python -m pytest -q -m network tests/test_real_weights.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ASSETS, HERE

pytestmark = pytest.mark.network

UNRELATED = ["cat", "car", "airplane", "pizza", "violin", "bridge"]


@pytest.fixture(autouse=True)
def real_cache(monkeypatch):
    """The user's own caches (the suite otherwise isolates fbseg's text cache)."""
    monkeypatch.delenv("FBSEG_CACHE", raising=False)


def test_default_model_ranks_cat_first():
    from fbseg.pipeline.segmenter import Segmenter

    seg = Segmenter.from_pretrained(host="naclip", device="cpu", precision="fp32")
    text = seg.encode_text(",".join(UNRELATED))
    rgb = Image.open(ASSETS / "cat.jpg").convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(rgb)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(seg.network.mean).view(3, 1, 1)
    std = torch.tensor(seg.network.std).view(3, 1, 1)
    with torch.no_grad():
        image = seg.clip.encode_image(((x - mean) / std)[None]).float()
    image = image / image.norm(dim=-1, keepdim=True)
    probs = torch.softmax(100.0 * image @ text.T, dim=-1)[0]
    assert probs.argmax().item() == 0 and probs[0] > 0.9, dict(zip(UNRELATED, probs.tolist()))


def test_default_segment_labels_the_cat(tmp_path):
    from typer.testing import CliRunner

    from fbseg_cli import app

    r = CliRunner().invoke(
        app,
        [
            "segment",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat,rug",
            "-o",
            str(tmp_path),
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    labels = np.asarray(Image.open(tmp_path / "cat.mask.png"))
    cat = np.asarray(Image.open(HERE / "data" / "cat_mask.png")).astype(bool)
    assert (labels[cat] == 0).mean() >= 0.8
    assert json.loads((tmp_path / "cat.json").read_text())["network"]["activation"] == "quick_gelu"
