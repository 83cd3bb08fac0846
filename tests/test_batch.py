"""Many images in one run: cross-image window batches, the streaming pipeline, faults."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fbseg import parse_classes
from fbseg.pipeline.window import protocol_size
from fbseg.runs import folder as folder_run
from fbseg.runs.inputs import collect_inputs
from fbseg.runs.outputs import OutputOptions
from fbseg.runs.stream import ItemStatus, stream_items
from fbseg_cli import app

import naive
from conftest import ASSETS, random_image
from helpers import FAST, EndsTheProcessThatReadsIt, bad_folder, normalised, tiny_segmenter


def run(args):
    return CliRunner().invoke(app, args, catch_exceptions=False)


@pytest.fixture
def fast(tiny_ckpt):
    return FAST + ["--checkpoint", str(tiny_ckpt)]


def test_windows_of_several_images_share_batches_and_match_naive(tiny_clip, monkeypatch):
    classes = ["cat", "sofa; couch", "floor"]
    seg = tiny_segmenter(tiny_clip, classes, windows_per_forward=5)  # 3 + 3 + 3 windows of 64²
    sizes = [(70, 130), (64, 100), (150, 90)]
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    batches = []
    real = seg.crop_model

    import fbseg.pipeline.segmenter as segmod

    orig = segmod.crop_logits

    def spy(model, crops, *a, **k):
        batches.append(crops.shape[0])
        return orig(model, crops, *a, **k)

    monkeypatch.setattr(segmod, "crop_logits", spy)
    results = seg.segment_batch(
        images, classes, short_side=64, window=64, stride=32, feedback=False
    )
    assert batches == [5, 4]
    text = seg.encode_text(classes)
    for rgb, res in zip(images, results):
        size = protocol_size(*rgb.shape[:2], 64)
        with torch.no_grad():
            expected = naive.slide_probs(
                lambda c: naive.crop_logits("naclip", real.visual, c, text, False, 3.0),
                normalised(rgb, size),
                64,
                32,
                16,
                rgb.shape[:2],
                40.0,
                [0, 1, 1, 2],
            )
        np.testing.assert_allclose(res.probs, expected.numpy(), rtol=0, atol=1e-5)


def _fake_result(rgb):
    from fbseg.result import SegmentationResult

    h, w = rgb.shape[:2]
    labels = (np.arange(h * w).reshape(h, w) % 2).astype(np.int64)
    probs = np.stack([labels == 0, labels == 1]).astype(np.float32)
    return SegmentationResult(labels, probs, ("a", "b"), (("a",), ("b",)), {})


@pytest.mark.parametrize("io_threads", [1, 3])
def test_pipeline_keeps_input_order_and_groups(tmp_path, io_threads):
    """Several decoder and writer threads (as beside a GPU) keep the order and grouping."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(7):
        Image.fromarray(random_image(10 + i, 12, seed=i)).save(src / f"im{i}.png")
    (src / "im3.png").write_bytes(b"junk")
    scan = collect_inputs([str(src)])
    groups = []

    def segment_batch(payloads):
        groups.append(len(payloads))
        return [_fake_result(p) for p in payloads]

    opts = OutputOptions(out_dir=tmp_path / "out")
    outcomes = list(
        stream_items(
            scan.items, segment_batch, opts, images_per_group=3, prefetch=2, io_threads=io_threads
        )
    )
    assert [o.item.display for o in outcomes] == [str(src / f"im{i}.png") for i in range(7)]
    done, failed = ItemStatus.DONE, ItemStatus.FAILED
    assert [o.status for o in outcomes] == [done] * 3 + [failed] + [done] * 3
    assert groups == [3, 3]
    for i in (0, 6):
        assert np.asarray(Image.open(tmp_path / "out" / f"im{i}.mask.png")).shape == (10 + i, 12)


def test_the_next_group_is_decoded_while_the_model_runs(tmp_path):
    """The readers run a whole group ahead (and their threads' worth more), whatever the
    prefetch asked: the model never waits for a group to be decoded after the first."""
    import threading
    import time

    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        Image.fromarray(random_image(8, 8, seed=i)).save(src / f"im{i}.png")
    scan = collect_inputs([str(src)])
    prepared = []
    lock = threading.Lock()

    def prepare(rgb):
        with lock:
            prepared.append(1)
        return rgb

    ahead = []

    def segment_batch(payloads):
        if not ahead:  # the first group: wait (up to 5 s) for the readers to fill up
            deadline = time.monotonic() + 5
            while len(prepared) < 8 + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            ahead.append(len(prepared))
        return [_fake_result(p) for p in payloads]

    opts = OutputOptions(out_dir=tmp_path / "out")
    outcomes = list(
        stream_items(
            scan.items, segment_batch, opts, prepare=prepare, images_per_group=4, prefetch=1
        )
    )
    assert [o.status for o in outcomes] == [ItemStatus.DONE] * 12
    assert ahead[0] >= 8 + 1  # this group, the next, and one for the reader thread


def test_more_classes_than_a_palette_holds_give_a_16_bit_label_map(tmp_path, fast):
    names = [f"thing{k}" for k in range(300)]
    r = run(["segment", str(ASSETS / "cat.jpg"), "-c", ",".join(names), "-o", str(tmp_path), *fast])
    assert r.exit_code == 0, r.output
    mask = Image.open(tmp_path / "cat.mask.png")
    assert mask.mode.startswith("I")  # 16-bit grey: the index itself, no palette
    labels = np.asarray(mask).astype(int)
    summary = json.loads((tmp_path / "cat.json").read_text())
    fractions = np.bincount(labels.ravel(), minlength=300) / labels.size
    assert len(fractions) == 300  # no index past the classes
    assert np.allclose([c["pixel_fraction"] for c in summary["classes"]], fractions)
    assert (fractions > 0).sum() > 1


def test_per_class_masks(tmp_path, fast):
    r = run(
        [
            "segment",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat,sofa; couch,floor,lamp,shelf,window,door",
            "-o",
            str(tmp_path),
            "--masks",
            "per-class",
            *fast,
        ]
    )
    assert r.exit_code == 0, r.output
    folder = tmp_path / "cat.masks"
    names = sorted(p.name for p in folder.iterdir())
    assert names[:3] == ["00-cat.png", "01-sofa-couch.png", "02-floor.png"] and len(names) == 7
    labels = np.asarray(Image.open(tmp_path / "cat.mask.png"))
    for k, name in enumerate(names):
        binary = np.asarray(Image.open(folder / name))
        assert binary.dtype == bool and np.array_equal(binary, labels == k)
    assert 0 < len(np.unique(labels)) < 7  # present and absent classes both checked
    r = run(["segment", str(ASSETS / "cat.jpg"), "-c", "cat", "--masks", "each", *fast])
    assert r.exit_code == 2 and "per-class" in r.stderr


def test_unreadable_and_vanishing_files_are_reported(tmp_path, fast, monkeypatch):
    """Faults injected where the code opens files: root can read anything, so no chmod."""
    import fbseg.io

    good = bad_folder(tmp_path / "in")
    Image.fromarray(random_image(20, 20, seed=9)).save(tmp_path / "in" / "locked.png")
    Image.fromarray(random_image(20, 20, seed=8)).save(tmp_path / "in" / "vanish.png")
    real_open, real_collect = fbseg.io.Image.open, folder_run.collect_inputs

    def guarded_open(fp, *a, **k):
        if str(fp).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    def collect_then_delete(*a, **k):
        scan = real_collect(*a, **k)
        (tmp_path / "in" / "vanish.png").unlink()  # gone after the scan, before it is read
        return scan

    monkeypatch.setattr(fbseg.io.Image, "open", guarded_open)
    monkeypatch.setattr(folder_run, "collect_inputs", collect_then_delete)
    out = tmp_path / "out"
    r = run(["segment", str(tmp_path / "in"), "-c", "a,b", "-o", str(out), *fast])
    assert r.exit_code == 4
    summary = json.loads((out / "summary.json").read_text())
    reasons = {
        Path(i["input"]).name: i["reason"] for i in summary["images"] if i["status"] == "failed"
    }
    assert "permission denied" in reasons["locked.png"]
    assert "no such file" in reasons["vanish.png"]
    assert summary["done"] == len(good)
    assert not (out / "locked.mask.png").exists() and not (out / "vanish.mask.png").exists()


def test_output_folder_turning_unwritable_mid_run(tmp_path, fast, monkeypatch):
    """After two images the folder refuses every write: the first two stay whole, the rest
    fail with a reason, no temporary or partial file is left, and the exit code is 4."""
    import fbseg.io

    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(random_image(30, 30, seed=i)).save(src / f"im{i}.png")
    calls = {"n": 0}
    real_link = fbseg.io.os.link

    def link(a, b):
        calls["n"] += 1
        if calls["n"] > 4:  # mask + json of two images
            raise PermissionError(13, "Permission denied")
        return real_link(a, b)

    def replace(a, b):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fbseg.io.os, "link", link)
    monkeypatch.setattr(fbseg.io.os, "replace", replace)
    out = tmp_path / "out"
    r = run(["segment", str(src), "-c", "a,b", "-o", str(out), *fast])
    assert r.exit_code == 4
    assert sorted(p.name for p in out.iterdir()) == [
        "im0.json",
        "im0.mask.png",
        "im1.json",
        "im1.mask.png",
    ]
    assert r.stderr.count("cannot write") >= 4  # three images and the run summary
    assert "summary.json" in r.stderr
    for name in ("im0", "im1"):
        assert json.loads((out / f"{name}.json").read_text())["classes"][0]["class"] == "a"


def test_a_user_file_in_the_way_is_never_overwritten(tmp_path, fast):
    (tmp_path / "cat.mask.png").write_bytes(b"my own file")
    r = run(["segment", str(ASSETS / "cat.jpg"), "-c", "cat,rug", "-o", str(tmp_path), *fast])
    assert r.exit_code == 4 and "exists (use --overwrite)" in r.stderr
    assert (tmp_path / "cat.mask.png").read_bytes() == b"my own file"
    assert not (tmp_path / "cat.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_killed_run_leaves_nothing_a_resume_trusts_or_trips_on(tmp_path, fast):
    """A writer killed between files leaves a mask without its JSON and a temporary: the
    rerun finishes the image (same bytes are not a conflict) and clears the temporary."""
    args = ["segment", str(ASSETS / "cat.jpg"), "-c", "cat,rug", "-o", str(tmp_path), *fast]
    assert run(args).exit_code == 0
    (tmp_path / "cat.json").unlink()
    (tmp_path / ".cat.json.abc123.tmp").write_text('{"partial')
    r = run(args)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "cat.json").read_text())["classes"][0]["class"] == "cat"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_killed_run_with_saved_probabilities_resumes(tmp_path, fast, monkeypatch):
    """The probabilities' .npz that a killed run finished is byte for byte what the rerun
    makes, even on another day (nothing in it depends on the clock)."""
    import time

    args = [
        "segment",
        str(ASSETS / "cat.jpg"),
        "-c",
        "cat,rug",
        "-o",
        str(tmp_path),
        "--save-probs",
        *fast,
    ]
    assert run(args).exit_code == 0
    (tmp_path / "cat.json").unlink()  # killed after the probabilities, before the JSON
    later = time.time() + 86400
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "localtime", lambda t=None: time.gmtime(later))
    r = run(args)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "cat.json").read_text())["classes"][0]["class"] == "cat"
    saved = np.load(tmp_path / "cat.probs.npz")["probs"]
    assert saved.shape[0] == 2 and saved.dtype == np.float16


def test_a_run_lists_its_output_folder_once_whatever_it_holds(tmp_path, fast, monkeypatch):
    """Stale temporaries are looked for once per folder when the run starts: a folder of many
    thousands of outputs is not listed again for every file written into it."""
    import os

    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        Image.fromarray(random_image(20, 24, seed=i)).save(src / f"im{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".im4.json.abc123.tmp").write_text('{"partial')  # a killed run's
    listed = []
    real_scandir = os.scandir

    def counting_scandir(folder="."):
        if not isinstance(folder, int):
            listed.append(Path(os.fspath(folder)))
        return real_scandir(folder)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    r = run(["segment", str(src), "-c", "cat,rug", "-o", str(out), "--overlay", *fast])
    assert r.exit_code == 0, r.output
    assert listed.count(out) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert len(list(out.glob("*.overlay.png"))) == 6


def test_one_image_from_stdin(tmp_path, tiny_ckpt):
    import subprocess
    import sys

    entry = Path(__file__).parent / "dist_entry.py"  # the CLI with the tiny config registered
    with open(ASSETS / "coffee.jpg", "rb") as stdin:
        p = subprocess.run(
            [
                sys.executable,
                str(entry),
                "segment",
                "-",
                "-c",
                "cup,table",
                "-o",
                str(tmp_path),
                *FAST,
                "--checkpoint",
                str(tiny_ckpt),
                "--json",
            ],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["input"] == "<stdin>"
    with Image.open(ASSETS / "coffee.jpg") as src:
        assert Image.open(tmp_path / "stdin.mask.png").size == src.size


def test_segment_folder_from_python_resumes_and_reports(tmp_path, tiny_clip):
    """The folder run as a library call: same outputs, failures, summary and exit status as
    the CLI, and a second call resumes (skips what is done)."""
    from fbseg.classes import parse_classes
    from fbseg.pipeline.config import SegmentConfig
    from fbseg.runs.folder import segment_folder

    good = bad_folder(tmp_path / "in")
    seg = tiny_segmenter(
        tiny_clip, ["a", "b"], config=SegmentConfig(short_side=64, window=64, stride=32)
    )
    classes = parse_classes("a,b")
    opts = OutputOptions(out_dir=tmp_path / "out", class_labels=classes.labels)
    run = segment_folder(seg, [str(tmp_path / "in")], classes, opts)
    assert run.exit_code == 4 and run.count(ItemStatus.DONE) == len(good)
    assert run.count(ItemStatus.FAILED) == 3 and run.skipped_non_images == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["done"] == len(good) and summary["failed"] == 3
    for stem, (h, w) in good.items():
        assert np.asarray(Image.open(tmp_path / "out" / f"{stem}.mask.png")).shape == (h, w)
    again = segment_folder(seg, [str(tmp_path / "in")], classes, opts)
    assert again.count(ItemStatus.SKIPPED) == len(good) and again.count(ItemStatus.DONE) == 0


def test_window_batches_follow_the_token_budget(tiny_clip, monkeypatch):
    """Without ``windows_per_forward`` a forward holds TOKENS_PER_FORWARD tokens' worth of
    windows: the tiny CLIP (patch 16) at 64² puts 4×4 tokens through per window."""
    import fbseg.pipeline.segmenter as segmod

    monkeypatch.setattr(segmod, "TOKENS_PER_FORWARD", 3 * 16 + 5)  # room for 3 windows
    classes = ["cat", "floor"]
    seg = tiny_segmenter(tiny_clip, classes)
    batches = []
    orig = segmod.crop_logits

    def spy(model, crops, *a, **k):
        batches.append(crops.shape[0])
        return orig(model, crops, *a, **k)

    monkeypatch.setattr(segmod, "crop_logits", spy)
    images = [random_image(70, 130, seed=1), random_image(64, 100, seed=2)]  # 3 + 3 windows
    budgeted = seg.segment_batch(images, classes, short_side=64, window=64, stride=32)
    assert batches == [3, 3]
    seg.windows_per_forward = 1  # an explicit setting wins over the budget
    batches.clear()
    single = seg.segment_batch(images, classes, short_side=64, window=64, stride=32)
    assert batches == [1] * 6
    for a, b in zip(budgeted, single):  # batching changes only the GEMMs' summation order
        np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("proxy", "timm_name", "size", "expected"),
    [
        # DINO B/8 sees the padded crop itself: (336/8)² and (336/8)·(448/8) tokens
        ("dino", "vit_base_patch8_224.dino", (336, 336), 42 * 42),
        ("dino", "vit_base_patch8_224.dino", (336, 448), 42 * 56),
        # SAM sees every crop at 1024²: 64² tokens whatever the crop
        ("sam", "samvit_base_patch16.sa1b", (336, 448), 64 * 64),
    ],
)
def test_proxyclip_counts_its_proxys_tokens(proxy, timm_name, size, expected):
    """A window's cost is its proxy's token count where that exceeds CLIP's (21² at 336²):
    8 DINO B/8 windows of 336² share a forward where 32 plain CLIP B/16 windows do."""
    import timm

    from fbseg.hosts.proxyclip import ProxyCLIP
    from fbseg.models.proxies import PROXIES
    from fbseg.pipeline.config import TOKENS_PER_FORWARD

    model = timm.create_model(timm_name, pretrained=False)
    host = ProxyCLIP(model, PROXIES.get(proxy))
    assert host.tokens_per_crop(*size, 16) == expected
    assert ProxyCLIP.__mro__[1]().tokens_per_crop(336, 336, 16) == 21 * 21
    if proxy == "dino" and size == (336, 336):
        assert TOKENS_PER_FORWARD // expected == 8
        assert TOKENS_PER_FORWARD // (21 * 21) == 32


def _lazy_fake_result(rgb):
    """As ``_fake_result``, its probabilities formed on first access, in float32 or float16
    (as beside a GPU)."""
    done = _fake_result(rgb)
    return type(done)(
        done.labels,
        lambda: done.probs,
        done.classes,
        done.names,
        {"timings": {"total_s": 0.0}},
        class_stats=done.class_stats,
        probs_float16=lambda: done.probs.astype(np.float16),
    )


def test_writer_processes_write_what_writer_threads_write(tmp_path):
    """The CLI's writers beside a GPU are processes: every file is byte for byte what writer
    threads write (overlays, per-class masks and probabilities formed lazily included), the
    order holds, and a write that fails is one failed image with its reason."""
    from fbseg.runs.outputs import MaskMode

    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(random_image(12 + i, 14, seed=i)).save(src / f"im{i}.png")
    scan = collect_inputs([str(src)])
    files = {}
    for processes in (False, True):
        out = tmp_path / f"out-{processes}"
        (out / "im2.mask.png").mkdir(parents=True)  # a folder where a mask must go
        opts = OutputOptions(
            out_dir=out,
            overlay=True,
            save_probs=True,
            masks=MaskMode.PER_CLASS,
            class_labels=("a", "b"),
        )
        outcomes = list(
            stream_items(
                scan.items,
                lambda payloads: [_lazy_fake_result(p) for p in payloads],
                opts,
                images_per_group=2,
                io_threads=2,
                writer_processes=processes,
            )
        )
        assert [o.item.display for o in outcomes] == [str(src / f"im{i}.png") for i in range(5)]
        statuses = [o.status for o in outcomes]
        assert statuses == [ItemStatus.DONE] * 2 + [ItemStatus.FAILED] + [ItemStatus.DONE] * 2
        assert "im2.mask.png" in outcomes[2].reason
        assert outcomes[0].digest.image_size == (12, 14) and outcomes[0].result is not None
        files[processes] = {
            p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
        }
    assert len(files[True]) == 4 * (4 + 2)  # mask, json, overlay, probs + 2 per-class masks
    assert files[True] == files[False]


def test_a_pickled_result_carries_probabilities_only_once_formed():
    import pickle

    rgb = random_image(6, 8, seed=1)
    lazy = _lazy_fake_result(rgb)
    copy = pickle.loads(pickle.dumps(lazy))
    np.testing.assert_array_equal(copy.labels, lazy.labels)
    assert copy.labels.dtype == np.int64  # sent as uint8, read back as the API's int64
    large = _lazy_fake_result(random_image(200, 300, seed=2))
    assert len(pickle.dumps(large)) < large.labels.nbytes / 4  # 1 byte per pixel, not 8
    np.testing.assert_array_equal(copy.class_stats, lazy.class_stats)
    assert copy.summary() == lazy.summary() and copy.classes == lazy.classes
    with pytest.raises(ValueError, match="without these probabilities"):
        copy.probs  # noqa: B018
    with pytest.raises(ValueError, match="without these probabilities"):
        copy.probs_float16  # noqa: B018
    half = _lazy_fake_result(rgb)
    half.probs_float16  # noqa: B018 (formed: sent along, alone)
    copy = pickle.loads(pickle.dumps(half))
    np.testing.assert_array_equal(copy.probs_float16, half.probs_float16)
    with pytest.raises(ValueError, match="without these probabilities"):
        copy.probs  # noqa: B018
    lazy.probs  # noqa: B018 (formed now: sent along)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy)).probs, lazy.probs)


def test_cli_with_writer_processes(tmp_path, fast, monkeypatch):
    """The CLI as it runs beside a GPU (writer processes), here on the CPU: the same files as
    with writer threads, and a bad file still fails alone."""
    from fbseg.pipeline.config import WRITER_PROCESSES

    good = bad_folder(tmp_path / "in")
    outputs = {}
    for processes in (False, True):
        monkeypatch.setitem(WRITER_PROCESSES, "cpu", processes)
        out = tmp_path / f"out-{processes}"
        r = run(["segment", str(tmp_path / "in"), "-c", "a,b", "-o", str(out), "--overlay", *fast])
        assert r.exit_code == 4, r.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["done"] == len(good)
        outputs[processes] = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert len(outputs[True]) == 2 * len(good) and outputs[True] == outputs[False]


def test_a_writer_process_that_dies_fails_its_image_and_the_run_goes_on(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(random_image(10, 12, seed=i)).save(src / f"im{i}.png")
    scan = collect_inputs([str(src)])

    def segment_batch(payloads):
        results = [_fake_result(p) for p in payloads]
        for r in results:
            if r.labels.shape == (10, 12) and segment_batch.calls == 1:
                r.meta["crash"] = EndsTheProcessThatReadsIt()
        segment_batch.calls += 1
        return results

    segment_batch.calls = 0
    opts = OutputOptions(out_dir=tmp_path / "out")
    outcomes = list(
        stream_items(
            scan.items, segment_batch, opts, images_per_group=2, io_threads=2, writer_processes=True
        )
    )
    statuses = [o.status for o in outcomes]
    assert statuses == [ItemStatus.DONE] * 2 + [ItemStatus.FAILED] * 2 + [ItemStatus.DONE]
    assert "im2.png: not written: a writer process ended unexpectedly" in outcomes[2].reason
    assert (tmp_path / "out" / "im4.mask.png").exists()  # a new writer took the rest


@pytest.mark.parametrize("group", [2, 5])  # a process decodes 1 or 3 images per message
def test_reader_processes_decode_what_reader_threads_decode(tmp_path, group):
    """Beside a GPU images are decoded in worker processes: the same pixels reach the model,
    in order, every bad file fails alone with the same one-line reason (also among the
    images of one message), and stdin (open in this process only) is read here."""
    good = bad_folder(tmp_path / "in")
    items = collect_inputs([str(tmp_path / "in"), "-"]).items
    stdin_bytes = (ASSETS / "cat.jpg").read_bytes()
    seen: dict[bool, list] = {}
    outcomes: dict[bool, list] = {}
    for processes in (False, True):
        seen[processes] = []

        def segment_batch(payloads, log=seen[processes]):
            log.extend(p.copy() for p in payloads)
            return [_fake_result(p) for p in payloads]

        outcomes[processes] = [
            (o.item.display, o.status, o.reason)
            for o in stream_items(
                items,
                segment_batch,
                OutputOptions(out_dir=tmp_path / f"out-{processes}"),
                stdin_reader=lambda: stdin_bytes,
                images_per_group=group,
                io_threads=2,
                writer_processes=processes,
                reader_processes=processes,
            )
        ]
    assert outcomes[True] == outcomes[False]
    statuses = [status for _, status, _ in outcomes[True]]
    assert statuses.count(ItemStatus.DONE) == len(good) + 1  # the folder's good files, stdin
    assert statuses.count(ItemStatus.FAILED) == 3  # empty, not an image, truncated
    assert len(seen[True]) == len(seen[False]) == len(good) + 1
    for a, b in zip(seen[True], seen[False]):
        np.testing.assert_array_equal(a, b)
    cat = np.asarray(Image.open(ASSETS / "cat.jpg").convert("RGB"))
    np.testing.assert_array_equal(seen[True][-1], cat)


def test_a_reader_process_that_dies_fails_its_image_and_the_run_goes_on(tmp_path):
    from fbseg.runs.inputs import InputItem

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.fromarray(random_image(10, 12, seed=i)).save(src / f"im{i}.png")
    items = collect_inputs([str(src)]).items
    crash = InputItem(EndsTheProcessThatReadsIt(), Path("crash"), "crash.png")
    outcomes = list(
        stream_items(
            [*items[:2], crash, *items[2:]],
            lambda payloads: [_fake_result(p) for p in payloads],
            OutputOptions(out_dir=tmp_path / "out"),
            images_per_group=2,
            io_threads=1,
            reader_processes=True,
        )
    )
    statuses = [o.status for o in outcomes]
    assert statuses == [ItemStatus.DONE] * 2 + [ItemStatus.FAILED] + [ItemStatus.DONE] * 2
    assert outcomes[2].reason.startswith("crash.png: not read: a reader process ended")
    assert (tmp_path / "out" / "im3.mask.png").exists()  # a new reader took the rest


def test_worker_processes_take_a_share_of_a_group_per_message(tmp_path, monkeypatch):
    """A reader or writer process gets its share of a group in one message (few hand-offs
    for the interpreter lock), and one that dies with several images is asked again for
    each alone: only the image that ended it fails, its share-mates are done."""
    from fbseg.runs.inputs import InputItem
    from fbseg.runs.worker_pool import WorkerPool

    src = tmp_path / "in"
    src.mkdir()
    for i in range(7):
        Image.fromarray(random_image(10 + i, 12, seed=i)).save(src / f"im{i}.png")
    items = collect_inputs([str(src)]).items
    crash = InputItem(EndsTheProcessThatReadsIt(), Path("crash"), "crash.png")
    messages = []
    submit = WorkerPool.submit

    def spy(pool, fn, jobs, *args):
        messages.append((fn.__name__, len(jobs)))
        return submit(pool, fn, jobs, *args)

    monkeypatch.setattr(WorkerPool, "submit", spy)

    def segment_batch(payloads):
        results = [_fake_result(p) for p in payloads]
        for r in results:
            if r.labels.shape == (15, 12):  # im5: ends the writer process that reads it
                r.meta["crash"] = EndsTheProcessThatReadsIt()
        return results

    outcomes = list(
        stream_items(
            [items[0], crash, *items[1:]],
            segment_batch,
            OutputOptions(out_dir=tmp_path / "out"),
            images_per_group=4,
            io_threads=2,
            writers=2,
            writer_processes=True,
            reader_processes=True,
        )
    )
    statuses = [o.status for o in outcomes]
    done, failed = ItemStatus.DONE, ItemStatus.FAILED
    assert statuses == [done, failed] + [done] * 4 + [failed, done]
    assert outcomes[1].reason.startswith("crash.png: not read: a reader process ended")
    assert "im5.png: not written: a writer process ended" in outcomes[6].reason
    for i in (0, 4):  # each shared a message with the image that ended its process
        assert (tmp_path / "out" / f"im{i}.mask.png").exists()
    reads = sorted(n for fn, n in messages if fn == "read_inputs")
    writes = sorted(n for fn, n in messages if fn == "write_images")
    # shares of 2: [im0, crash] died and was asked again image by image; im1..im6 in pairs
    assert reads == [1, 1, 2, 2, 2, 2]
    # groups [im0..im3] and [im4..im6] in shares of 2: [im4, im5] died, then each alone
    assert writes == [1, 1, 1, 2, 2, 2]


def test_a_group_is_split_evenly_among_the_writer_processes(tmp_path, monkeypatch):
    """Every writer process gets a share of a group: 7 images for 3 writers go as 3, 2 and 2
    (not 3, 3 and 1, which leaves a writer idle while another writes a third image), in
    order, each written once."""
    from fbseg.runs.worker_pool import WorkerPool

    src = tmp_path / "in"
    src.mkdir()
    for i in range(7):
        Image.fromarray(random_image(10 + i, 12, seed=i)).save(src / f"im{i}.png")
    messages = []
    submit = WorkerPool.submit

    def spy(pool, fn, jobs, *args):
        messages.append([Path(job[0].display).name for job in jobs])
        return submit(pool, fn, jobs, *args)

    monkeypatch.setattr(WorkerPool, "submit", spy)
    outcomes = list(
        stream_items(
            collect_inputs([str(src)]).items,
            lambda payloads: [_fake_result(p) for p in payloads],
            OutputOptions(out_dir=tmp_path / "out"),
            images_per_group=7,
            writers=3,
            writer_processes=True,
        )
    )
    assert [o.status for o in outcomes] == [ItemStatus.DONE] * 7
    names = [f"im{i}.png" for i in range(7)]
    assert messages == [names[:3], names[3:5], names[5:]]
    assert all((tmp_path / "out" / f"im{i}.mask.png").exists() for i in range(7))


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 11, 16, 20])
def test_even_shares_deal_the_items_as_evenly_as_they_divide(parts):
    from fbseg.runs.stream import even_shares

    for n in range(0, 40):
        items = list(range(n))
        shares = even_shares(items, parts)
        # dealt one by one to min(parts, n) piles, the first piles taking the remainder
        expected_sizes = [0] * min(parts, n)
        for i in range(n):
            expected_sizes[i % len(expected_sizes)] += 1
        assert [len(share) for share in shares] == expected_sizes
        assert [x for share in shares for x in share] == items


def test_a_write_share_whose_process_died_is_retried_alone_while_the_writers_are_open():
    from concurrent.futures import Future

    from fbseg.runs.stream import _PendingWrite
    from fbseg.runs.worker_pool import WorkerDied

    died: Future = Future()
    died.set_exception(WorkerDied("a writer process ended unexpectedly"))
    retries = []

    def alone() -> Future:
        retries.append(1)
        done: Future = Future()
        done.set_result([(None, 0.25)])
        return done

    pending = _PendingWrite(died, 1, alone)
    assert pending.result() == (None, 0.25) and pending.result() == (None, 0.25)
    assert len(retries) == 1  # asked again once, however often the outcome is read

    def closed() -> Future:
        raise RuntimeError("cannot submit to a pool that was shut down")

    with pytest.raises(WorkerDied):  # after Ctrl-C: the image fails as "not written"
        _PendingWrite(died, 1, closed).result()
    with pytest.raises(WorkerDied):  # it was alone in its message: nothing to retry
        _PendingWrite(died, 0, None).result()


@pytest.mark.parametrize(
    ("device", "cores", "ranks", "expected"),
    [
        ("cuda", 16, None, 11),  # 16 cores less the model's thread and 4 decoder threads
        ("cuda", 64, None, 16),  # at most MAX_WRITER_PROCESSES
        ("cuda", 16, "4", 4),  # four GPU ranks on the node: 4 cores each, IO_THREADS at least
        ("cuda", 64, "2", 16),
        ("cuda", 32, "2", 11),
        ("cpu", 2, None, 1),
    ],
)
def test_writer_processes_take_the_cores_left(monkeypatch, device, cores, ranks, expected):
    from fbseg.pipeline import device as device_mod

    monkeypatch.setattr(device_mod, "usable_cores", lambda: cores)
    if ranks is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    assert device_mod.default_writer_process_count(torch.device(device)) == expected


def _stream_settings(tmp_path, tiny_clip, monkeypatch, images: int, **run_args) -> dict:
    """The settings ``segment_folder`` passes to ``stream_items`` for a folder of ``images``
    tiny images and these ``run_args`` (nothing is segmented)."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(images):
        Image.fromarray(random_image(8, 8, seed=i)).save(src / f"im{i}.png")
    seen: dict = {}

    def spy(items, *args, **kwargs):
        seen.update(kwargs)
        return iter(())

    monkeypatch.setattr(folder_run, "stream_items", spy)
    seg = tiny_segmenter(tiny_clip, ["a", "b"])
    folder_run.segment_folder(
        seg, [str(src)], parse_classes("a,b"), OutputOptions(out_dir=tmp_path / "out"), **run_args
    )
    return seen


@pytest.mark.parametrize(
    ("processes", "images", "writers", "expected"),
    [
        (True, 3, None, 3),
        (True, 20, None, 11),
        (False, 20, None, 2),
        (True, 20, 5, 5),
        (True, 1, None, 1),
    ],
)
def test_a_folder_run_starts_no_more_writers_than_it_needs(
    tmp_path, tiny_clip, monkeypatch, processes, images, writers, expected
):
    """Writer processes: one per free core but never more than images; threads: as many
    as reader threads."""
    from fbseg.pipeline import device as device_mod

    monkeypatch.setattr(device_mod, "usable_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setitem(device_mod.IO_THREADS, "cpu", 4)  # as beside a GPU
    seen = _stream_settings(
        tmp_path,
        tiny_clip,
        monkeypatch,
        images,
        io_threads=2 if not processes else None,
        writers=writers,
        writer_processes=processes,
    )
    assert seen["writers"] == expected
    assert seen["writer_processes"] == (processes and images > 1)
    assert seen["reader_processes"] is False  # the CPU's default


@pytest.mark.parametrize(
    ("images", "asked", "expected"), [(3, None, True), (1, None, False), (3, False, False)]
)
def test_a_folder_run_decodes_in_processes_by_device(
    tmp_path, tiny_clip, monkeypatch, images, asked, expected
):
    """``READER_PROCESSES`` (as beside a GPU here) unless the caller says otherwise; a single
    image starts no process."""
    from fbseg.pipeline import device as device_mod

    monkeypatch.setitem(device_mod.READER_PROCESSES, "cpu", True)
    seen = _stream_settings(tmp_path, tiny_clip, monkeypatch, images, reader_processes=asked)
    assert seen["reader_processes"] is expected


def test_an_empty_batch_gives_no_results(tiny_clip):
    seg = tiny_segmenter(tiny_clip, ["a", "b"])
    assert seg.segment_batch([], "a,b") == []
