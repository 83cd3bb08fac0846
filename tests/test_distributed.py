"""torchrun with 2 CPU processes (gloo): same outputs and the same mIoU as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fbseg.runs.distributed import Dist

from conftest import TINY, random_image
from helpers import FAST, make_dataset

ENTRY = Path(__file__).parent / "dist_entry.py"


def _launch(nproc: int, args: list[str], tmp_path: Path, port: int, **env_extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent), **env_extra)
    env["TMPDIR"] = str(tmp_path)  # torchrun's own folders go with the test's, not into /tmp
    if nproc == 1:
        cmd = [sys.executable, str(ENTRY), *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(port),
            str(ENTRY),
            *args,
        ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_shards_are_disjoint_complete_and_balanced():
    items = list(range(11))
    shards = [Dist(r, 3).shard(items) for r in range(3)]
    assert sorted(x for s in shards for x in s) == items
    assert [len(s) for s in shards] == [4, 4, 3]


def test_two_processes_segment_like_one(tmp_path, tiny_ckpt):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(random_image(40 + 4 * i, 50, seed=i)).save(src / f"im{i}.png")
    (src / "bad.png").write_bytes(b"junk")
    common = [
        "segment",
        str(src),
        "-c",
        "a,b; c,d",
        *FAST,
        "--checkpoint",
        str(tiny_ckpt),
        "-q",
    ]
    one = _launch(1, common + ["-o", str(tmp_path / "one")], tmp_path, 29611)
    two = _launch(2, common + ["-o", str(tmp_path / "two")], tmp_path, 29612)
    assert one.returncode == 4 and two.returncode != 0, (one.stderr, two.stderr)
    masks = sorted(p.name for p in (tmp_path / "one").glob("*.mask.png"))
    assert (
        masks == sorted(p.name for p in (tmp_path / "two").glob("*.mask.png")) and len(masks) == 5
    )
    for name in masks:
        a = np.asarray(Image.open(tmp_path / "one" / name))
        b = np.asarray(Image.open(tmp_path / "two" / name))
        assert np.array_equal(a, b), name
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert [i["input"] for i in s2["images"]] == [i["input"] for i in s1["images"]]  # no duplicates
    assert (s2["done"], s2["failed"]) == (5, 1)
    # a rerun resumes: everything already written is skipped, by every rank
    again = _launch(2, common + ["-o", str(tmp_path / "two")], tmp_path, 29613)
    s3 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (s3["done"], s3["skipped"], s3["failed"]) == (0, 5, 1), again.stderr


def test_a_dying_rank_fails_the_run_and_a_rerun_resumes(tmp_path, tiny_ckpt):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        Image.fromarray(random_image(40, 40, seed=i)).save(src / f"im{i}.png")
    args = [
        "segment",
        str(src),
        "-c",
        "a,b",
        *FAST,
        "--checkpoint",
        str(tiny_ckpt),
        "-q",
        "-o",
        str(tmp_path / "out"),
    ]
    crashed = _launch(2, args, tmp_path, 29631, FBSEG_TEST_KILL_RANK="1")
    assert crashed.returncode != 0 and "FAILED" in crashed.stderr  # torchrun names the dead rank
    written = {p.name for p in (tmp_path / "out").glob("*.json") if p.name != "summary.json"}
    assert "im3.json" not in written and "im5.json" not in written  # rank 1 died on its 2nd image
    again = _launch(2, args, tmp_path, 29632)
    assert again.returncode == 0, again.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped"] == len(written) and summary["done"] == 6 - len(written)
    assert sorted(i["input"] for i in summary["images"]) == sorted(
        str(src / f"im{i}.png") for i in range(6)
    )
    assert not [
        p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")
    ]  # no stale temporaries


def test_two_processes_evaluate_like_one(tmp_path, tiny_ckpt):
    make_dataset("voc21", tmp_path / "data", n=5)
    common = [
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
        "--json",
        "-q",
    ]
    one = _launch(1, common + ["--work-dir", str(tmp_path / "w1")], tmp_path, 29621)
    two = _launch(2, common + ["--work-dir", str(tmp_path / "w2")], tmp_path, 29622)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout.strip().splitlines()[-1])
    assert r2["images"] == r1["images"] == 5
    assert r2["mIoU"] == r1["mIoU"] and r2["aAcc"] == r1["aAcc"]
    assert r2["per_class"] == r1["per_class"]
    assert len(list((tmp_path / "w2" / "counts").rglob("*.npy"))) == 5
