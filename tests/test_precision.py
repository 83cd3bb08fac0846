"""What `--precision auto` resolves to (fp16 on CUDA, fp32 elsewhere), and the tip a CPU
that multiplies bf16 in hardware gets."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fbseg.pipeline import device as device_mod
from fbseg.pipeline.device import resolve_precision
from fbseg_cli import app

from conftest import ASSETS
from helpers import FAST

TIP = "tip: --precision bf16 is about 3× faster on this CPU"


@pytest.fixture(params=[True, False], ids=["bf16 units", "no bf16 units"])
def bf16_units(request, monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_bf16_matrix_units", lambda: request.param)
    return request.param


def test_auto_is_fp16_on_cuda_and_fp32_elsewhere(bf16_units):
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16
    assert resolve_precision("auto", torch.device("mps")) == torch.float32
    for name, dtype in [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]:
        assert resolve_precision(name, torch.device("cpu")) == dtype


def test_the_probe_agrees_with_the_cpus_own_flags():
    """PyTorch's answer against the kernel's list of the CPU's features (Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo here")
    flags = {
        flag
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[1].split()
    }
    expected = "amx_bf16" in flags and torch.backends.mkldnn.is_available()
    assert device_mod.cpu_has_bf16_matrix_units() == expected


def test_the_tip_comes_with_auto_on_a_cpu_with_bf16_units(tmp_path, tiny_ckpt, bf16_units):
    args = ["segment", str(ASSETS / "cat.jpg"), "-c", "cat,rug", *FAST]
    args += ["--checkpoint", str(tiny_ckpt)]

    def stderr_with(*more):
        r = CliRunner().invoke(app, [*args, *more, "-o", str(tmp_path / "-".join(more))])
        assert r.exit_code == 0, r.output
        return " ".join(r.stderr.split())  # as one line, however the console wrapped it

    assert (TIP in stderr_with()) == bf16_units
    assert TIP not in stderr_with("--precision", "fp32")  # asked for: no tip
    assert TIP not in stderr_with("--precision", "bf16")


def test_bf16_on_a_cpu_runs_and_says_so(tmp_path, tiny_ckpt):
    args = ["segment", str(ASSETS / "cat.jpg"), "-c", "cat,rug", *FAST, "--json", "-q"]
    r = CliRunner().invoke(
        app, [*args, "--checkpoint", str(tiny_ckpt), "--precision", "bf16", "-o", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["settings"]["precision"] == "bfloat16"
