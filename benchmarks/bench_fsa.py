"""FSA step alone: the reference form vs fbseg, time and peak memory per cell.

Each cell runs in its own subprocess: peak RSS of that process above what it held once the
inputs existed and both forms had run once on a 16-patch input (so library start-up is not
counted); CUDA: max_memory_allocated. Time and memory come from separate runs: memory with
glibc's mmap threshold fixed at its starting value (MALLOC_MMAP_THRESHOLD_=131072, for both
forms), so a freed buffer is returned instead of kept by the dynamic threshold, which makes
the peak reproducible but the run slower. Random inputs: the numbers measure cost, not quality.

    python benchmarks/bench_fsa.py [--device cpu] [--cap-gb 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

import reference_form as reference

SIZES = [441, 576, 1764, 4096]
CLASSES = [21, 171, 847]
HEADS, HEAD_DIM = 12, 64


def reference_form(P, A, v, lam):
    """As the reference code does it: N×N×C KL, per-head dense ensemble products."""
    return reference.ensemble_apply(A, reference.feedback_attention(P, lam), v)


def fbseg_form(P, A, v, lam):
    from fbseg import fsa

    return fsa.ensemble_apply(A, fsa.feedback_attention(P, lam), v)


def run_cell(form: str, N: int, C: int, device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    P = torch.softmax(3 * torch.randn(1, N, C), -1).to(device)
    A = torch.softmax(torch.randn(1, 1, N, N), -1).to(device)
    v = torch.randn(1, HEADS, N, HEAD_DIM).to(device)
    fn = reference_form if form == "reference" else fbseg_form
    with torch.inference_mode():  # library start-up (thread pools, BLAS buffers) is not the step's
        fn(
            torch.softmax(torch.randn(1, 16, C), -1).to(device),
            torch.softmax(torch.randn(1, 1, 16, 16), -1).to(device),
            torch.randn(1, HEADS, 16, HEAD_DIM).to(device),
            3.0,
        )
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn(P, A, v, 3.0)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"form": form, "N": N, "C": C, "seconds": min(times), "peak_mb": peak}


def _subprocess_cell(device: str, form: str, N: int, C: int, repeats: int, env: dict) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--device",
            device,
            "--cell",
            form,
            str(N),
            str(C),
            str(repeats),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    if out.returncode != 0:
        return {"form": form, "N": N, "C": C, "skipped": out.stderr.strip().splitlines()[-1][:60]}
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cap-gb", type=float, default=16.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    ap.add_argument("--classes", type=int, nargs="+", default=CLASSES)
    ap.add_argument("--cell", nargs=4, metavar=("FORM", "N", "C", "REPEATS"))
    args = ap.parse_args()
    if args.cell:
        form, N, C, repeats = args.cell
        print(json.dumps(run_cell(form, int(N), int(C), args.device, int(repeats))))
        return
    rows = []
    print("FSA step, random inputs (timing only), device", args.device, f"h={HEADS}")
    print(
        f"{'N':>5} {'C':>4} | {'reference s':>11} {'MB':>8} | {'fbseg s':>8} {'MB':>7} | {'speed-up':>8} {'mem ratio':>9}"
    )
    for N in args.sizes:
        for C in args.classes:
            cells = {}
            for form in ("reference", "fbseg"):
                need_gb = (
                    (3 * N * N * C + 6 * HEADS * N * N) * 4 / 2**30 if form == "reference" else 0
                )
                if need_gb > args.cap_gb:
                    cells[form] = {
                        "form": form,
                        "N": N,
                        "C": C,
                        "skipped": f"needs ~{need_gb:.0f} GB",
                    }
                    continue
                timed = _subprocess_cell(args.device, form, N, C, 3 if N <= 1764 else 1, {})
                if "skipped" in timed:
                    cells[form] = timed
                    continue
                sized = _subprocess_cell(
                    args.device, form, N, C, 1, {"MALLOC_MMAP_THRESHOLD_": "131072"}
                )
                cells[form] = {**timed, "peak_mb": sized.get("peak_mb", float("nan"))}
            r, f = cells["reference"], cells["fbseg"]
            if "skipped" in r:
                print(
                    f"{N:>5} {C:>4} | {'skipped: ' + r['skipped']:>20} | {f['seconds']:>8.3f} {f['peak_mb']:>7.0f} |"
                )
            else:
                print(
                    f"{N:>5} {C:>4} | {r['seconds']:>11.3f} {r['peak_mb']:>8.0f} | {f['seconds']:>8.3f} "
                    f"{f['peak_mb']:>7.0f} | {r['seconds'] / f['seconds']:>7.1f}x "
                    f"{r['peak_mb'] / max(f['peak_mb'], 1):>8.1f}x"
                )
            rows += [r, f]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
