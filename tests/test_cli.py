"""The command line as a user meets it: outputs, exit codes, bad input, resume, offline."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fbseg_cli import app

from conftest import ASSETS, interrupt_on_call, random_image
from helpers import FAST, bad_folder


def run(args, **kw):
    return CliRunner().invoke(app, args, catch_exceptions=False, **kw)


@pytest.fixture
def fast(tiny_ckpt):
    return FAST + ["--checkpoint", str(tiny_ckpt)]


def test_single_image_writes_mask_json_overlay(tmp_path, fast):
    r = run(
        [
            "segment",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat,sofa; couch,floor",
            "-o",
            str(tmp_path),
            "--overlay",
            *fast,
        ]
    )
    assert r.exit_code == 0, r.output
    mask = Image.open(tmp_path / "cat.mask.png")
    assert mask.mode == "P" and mask.size == (451, 300)
    assert np.asarray(mask).max() < 3 and len(mask.getpalette()) >= 9
    data = json.loads((tmp_path / "cat.json").read_text())
    assert [c["class"] for c in data["classes"]] == ["cat", "sofa;couch", "floor"]
    assert abs(sum(c["pixel_fraction"] for c in data["classes"]) - 1) < 1e-9
    assert data["host"] == "naclip" and data["feedback"] is True
    assert data["image_size"] == {"height": 300, "width": 451}
    assert Image.open(tmp_path / "cat.overlay.png").size[0] > 451  # legend panel beside
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_json_stdout_is_one_clean_line_per_image(tmp_path, fast):
    for i in range(2):
        Image.fromarray(random_image(50, 70, seed=i)).save(tmp_path / f"im{i}.png")
    r = run(
        [
            "segment",
            str(tmp_path / "im0.png"),
            str(tmp_path / "im1.png"),
            "-c",
            "a,b",
            "--json",
            "-o",
            str(tmp_path / "out"),
            *fast,
        ]
    )
    assert r.exit_code == 0
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    assert {json.loads(line)["input"] for line in lines} == {
        str(tmp_path / "im0.png"),
        str(tmp_path / "im1.png"),
    }


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, fast):
    args = ["segment", str(ASSETS / "cat.jpg"), "-c", "cat,rug", "-o", str(tmp_path), *fast]
    assert run(args).exit_code == 0
    (tmp_path / "cat.json").write_text("mine")
    (tmp_path / "cat.mask.png").write_bytes(b"mine")
    r = run(args)
    assert r.exit_code == 0 and "skipped" in r.stderr
    assert (tmp_path / "cat.json").read_text() == "mine"
    assert run(args + ["--overwrite"]).exit_code == 0
    assert json.loads((tmp_path / "cat.json").read_text())["classes"][0]["class"] == "cat"


def test_bad_files_are_reported_and_the_rest_done(tmp_path, fast):
    good = bad_folder(tmp_path / "in")
    out = tmp_path / "out"
    r = run(["segment", str(tmp_path / "in"), "-c", "a,b", "-o", str(out), *fast])
    assert r.exit_code == 4, r.output
    for stem, (h, w) in good.items():
        assert np.asarray(Image.open(out / f"{stem}.mask.png")).shape == (h, w), stem
    summary = json.loads((out / "summary.json").read_text())
    failed = {Path(i["input"]).name for i in summary["images"] if i["status"] == "failed"}
    assert failed == {"empty.jpg", "text.png", "truncated.jpg"}
    assert summary["done"] == len(good)
    for name in failed:
        assert not (out / (Path(name).stem + ".mask.png")).exists()
    assert "1 non-images ignored" in r.stderr


def test_unwritable_output_is_reported_without_partial_files(tmp_path, fast, monkeypatch):
    import fbseg.io

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fbseg.io.os, "link", refuse)
    r = run(["segment", str(ASSETS / "cat.jpg"), "-c", "cat,rug", "-o", str(tmp_path), *fast])
    assert r.exit_code == 4
    assert "cannot write" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_same_stem_inputs_keep_their_suffix(tmp_path, fast):
    Image.fromarray(random_image(40, 40, 1)).save(tmp_path / "a.jpg")
    Image.fromarray(random_image(40, 40, 2)).save(tmp_path / "a.png")
    r = run(
        [
            "segment",
            str(tmp_path / "a.jpg"),
            str(tmp_path / "a.png"),
            "-c",
            "x,y",
            "-o",
            str(tmp_path / "o"),
            *fast,
        ]
    )
    assert r.exit_code == 0
    assert (tmp_path / "o" / "a.jpg.mask.png").exists() and (
        tmp_path / "o" / "a.png.mask.png"
    ).exists()


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["-c", "cat,,dog"], 2, "empty class"),
        (["-c", "cat,Cat"], 2, "duplicate class"),
        (["-c", "cat", "--background-threshold", "0.2"], 2, "needs --background"),
        (["-c", "cat", "--host", "naclipp"], 2, "did you mean naclip"),
        (["-c", "cat", "--model", "ViT-B-61"], 2, "unknown model"),
        (["-c", "cat", "--precision", "fp8"], 2, "unknown precision"),
        (["-c", "cat", "--compare", "--no-feedback"], 2, "needs --feedback"),
        (["-c", "cat", "--cuda-graphs"], 2, "CUDA graphs need a CUDA device, not cpu"),
    ],
)
def test_usage_errors(tmp_path, fast, args, code, text):
    r = run(["segment", str(ASSETS / "cat.jpg"), "-o", str(tmp_path), *fast, *args])
    assert r.exit_code == code
    assert text in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("engine", ["clip", "sam3"])
@pytest.mark.parametrize(
    "args,text",
    [
        (["--precision", "fp8"], "unknown precision 'fp8'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_a_bad_device_or_precision_fails_before_the_loading_line(tmp_path, engine, args, text):
    photo = str(ASSETS / "cat.jpg")
    r = run(["segment", photo, "-c", "cat", "--engine", engine, "-o", str(tmp_path), *args])
    assert r.exit_code == 2 and text in r.stderr
    assert "loading" not in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("command", ["segment", "explain"])
@pytest.mark.parametrize(
    "args,code,text",
    [
        (["--stride", "400"], 2, "stride larger than the window"),
        (["--logit-scale", "-1"], 2, "logit scale must be positive"),
        (["--pamr-steps", "0"], 2, "--pamr-steps must be at least 1"),
        (["--proxy", "dinoo"], 2, "unknown proxy 'dinoo'"),
        (["--short-side", "8"], 2, "short side must be ≥ the patch size (16)"),
        (["-o", "{photo}"], 2, "exists and is not a folder"),
        (["-o", "{photo}/out"], 4, "cannot write into"),
        (["--checkpoint", "{photo}.pt"], 3, "--checkpoint {photo}.pt: no such file"),
        (["--proxy-checkpoint", "{photo}.pt"], 3, "--proxy-checkpoint {photo}.pt: no such file"),
    ],
)
def test_bad_settings_fail_before_any_weights_load(
    tmp_path, monkeypatch, command, args, code, text
):
    """Each of these fails with one line before a weights file is read: a run that cannot
    go anywhere costs no model load (several seconds on a CPU, minutes with a download)."""
    import fbseg.pipeline.segmenter

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(fbseg.pipeline.segmenter, "load_clip", no_loading)
    photo = tmp_path / "cat.jpg"
    photo.write_bytes((ASSETS / "cat.jpg").read_bytes())
    args = [a.format(photo=photo) for a in args]
    out = [] if "-o" in args else ["-o", str(tmp_path / "out")]
    r = run([command, str(photo), "-c", "cat,rug", "--device", "cpu", *out, *args])
    assert r.exit_code == code, r.output
    assert text.format(photo=photo) in r.stderr and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.jpg"]  # no folder left behind


def test_first_use_of_class_names_is_announced_once(tmp_path, fast, monkeypatch):
    """The wait for the text encoder is said before it starts, with the number of names
    not cached; a run whose names are all cached says nothing of it."""
    monkeypatch.setenv("FBSEG_CACHE", str(tmp_path / "cache"))
    photo = str(ASSETS / "cat.jpg")
    r = run(["segment", photo, "-c", "cat,sofa; couch", "-o", str(tmp_path / "a"), *fast])
    assert r.exit_code == 0 and "encoding 3 class names not used before" in r.stderr
    r = run(["segment", photo, "-c", "sofa; couch,cat", "-o", str(tmp_path / "b"), *fast])
    assert r.exit_code == 0 and "encoding" not in r.stderr
    r = run(["segment", photo, "-c", "cat,rug", "-o", str(tmp_path / "c"), *fast])
    assert r.exit_code == 0 and "encoding 1 class name not used before" in r.stderr
    r = run(["segment", photo, "-c", "cat,lamp", "-q", "-o", str(tmp_path / "d"), *fast])
    assert r.exit_code == 0 and "encoding" not in r.stderr


def test_missing_input_and_directory(tmp_path, fast):
    r = run(["segment", str(tmp_path / "nope.jpg"), "-c", "cat", *fast])
    assert r.exit_code == 5 and "no input image matched" in r.stderr
    (tmp_path / "empty").mkdir()
    assert run(["segment", str(tmp_path / "empty"), "-c", "cat", *fast]).exit_code == 5


def test_wrong_architecture_and_garbage_checkpoints(tmp_path, b16_ckpt):
    r = run(
        [
            "segment",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat",
            "--checkpoint",
            str(b16_ckpt),
            "--model",
            "ViT-L-14",
            "--host",
            "naclip",
            "-o",
            str(tmp_path),
        ]
    )
    assert r.exit_code == 3 and "does not match ViT-L-14" in r.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    r = run(
        [
            "segment",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat",
            "--checkpoint",
            str(junk),
            "--host",
            "naclip",
            "-o",
            str(tmp_path),
        ]
    )
    assert r.exit_code == 3 and "not a readable weights file" in r.stderr


def _cli(args, env_extra, cwd):
    env = dict(os.environ, **env_extra)
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "fbseg_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    return p, time.perf_counter() - t0


def test_offline_without_weights_fails_fast_with_exit_3(tmp_path, b16_ckpt):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path)}
    p, seconds = _cli(
        ["segment", str(ASSETS / "cat.jpg"), "-c", "cat", "--host", "naclip"], env, tmp_path
    )
    assert p.returncode == 3, p.stderr
    lines = [line for line in p.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "--checkpoint" in lines[0] and "Traceback" not in p.stderr
    assert seconds < 60  # no minute of retries (the model build itself dominates)
    p, _ = _cli(
        ["segment", str(ASSETS / "cat.jpg"), "-c", "cat", "--checkpoint", str(b16_ckpt)],
        env,
        tmp_path,
    )  # proxyclip default needs proxy weights
    assert p.returncode == 3 and "--proxy-checkpoint" in p.stderr


def test_help_does_not_import_torch():
    code = "import sys, fbseg_cli; fbseg_cli.app; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_models_lists_everything():
    r = run(["models", "--json"])
    data = json.loads(r.stdout)
    from fbseg.hosts import HOSTS

    assert [h["name"] for h in data["hosts"]] == HOSTS.names()
    assert {"dino", "dinov2", "sam", "mae"} <= {p["name"] for p in data["proxies"]}
    assert [b["name"] for b in data["backbones"]] == ["ViT-B-16", "ViT-H-14", "ViT-L-14"]


def test_interrupt_then_resume_processes_exactly_the_rest(tmp_path, fast, monkeypatch):
    from fbseg.pipeline.segmenter import Segmenter

    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(random_image(40, 40, seed=i)).save(src / f"im{i}.png")
    real = Segmenter.segment_batch
    interrupt_on_call(monkeypatch, Segmenter, "segment_batch", 3)
    args = ["segment", str(src), "-c", "a,b", "-o", str(tmp_path / "out"), *fast]
    r = run(args)
    assert r.exit_code == 130 and "2 of 5 images done" in r.stderr
    assert sorted(
        p.name for p in (tmp_path / "out").glob("*.json") if p.name != "summary.json"
    ) == ["im0.json", "im1.json"]
    assert not list((tmp_path / "out").glob(".*tmp"))
    monkeypatch.setattr(Segmenter, "segment_batch", real)
    r = run(args)
    assert r.exit_code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["done"], summary["skipped"], summary["failed"]) == (3, 2, 0)


def test_quiet_still_reports_a_failed_input(tmp_path, fast):
    (tmp_path / "bad.jpg").write_text("not an image")
    r = run(
        ["segment", str(tmp_path / "bad.jpg"), "-c", "cat", "-o", str(tmp_path / "o"), "-q", *fast]
    )
    assert r.exit_code == 4 and "bad.jpg: not an image" in r.stderr
