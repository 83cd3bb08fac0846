"""The segmentation protocol's settings, and the only place their defaults are written.

Defaults are the FSA reference's for every host. Everything else (the CLI, per-dataset
protocols, presets) states only what it changes: ``DEFAULTS.with_flags(...)`` for options a
user may leave unset, ``DEFAULTS.replace(...)`` for exact values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from fbseg.errors import ConfigError

# By device type (others as "cpu"): images whose windows share one model batch (--batch), and
# decoder threads (and writer threads, where writers are threads). A GPU needs several images
# per call and threads to feed it; on a CPU the model already uses every core. On an H200,
# `segment DIR` ran fastest at 16
# images per call of the 1, 4 and 16 tried (NACLIP 172 images/s against 145 at 4 and 99 at 1;
# ProxyCLIP 86 against 79 and 65: benchmarks/bench_throughput.py --groups).
IMAGES_PER_CALL = {"cpu": 1, "cuda": 16}
IO_THREADS = {"cpu": 1, "cuda": 4}
# The precision `--precision auto` runs the backbones in, by device type (others as "cpu");
# FSA's decision runs in fp32 whatever this is. fp16 on CUDA: its labels agree with fp32's on
# 99.83–99.97% of the pixels, and on all of those where fp32's top two classes differ by more
# than 0.01 (benchmarks/bench_precision.py). A CPU stays in fp32, the reference's precision,
# even one with bf16 matrix units (Intel AMX), where `--precision bf16` segmented
# assets/cat.jpg about 3× faster (2 cores, VOC21's names, with FSA: ProxyCLIP 2.08 against
# 6.27 s, NACLIP 0.37 against 0.96 s; benchmarks/bench_pipeline.py --precision) but its labels
# differed from fp32's on 0.17–0.74% of the pixels (none with a margin): the CLI says so on
# such a CPU instead (``BF16_SPEED_UP``).
AUTO_PRECISION = {"cuda": "fp16", "cpu": "fp32"}
BF16_SPEED_UP = 3
# Whether a folder run's writers are processes rather than threads, by device type. Beside a GPU
# the thread that drives the model is busy launching kernels, and writer threads (PNG
# encoding, file writes) slowed it down through the interpreter lock.
WRITER_PROCESSES = {"cpu": False, "cuda": True}
# Whether a folder run and `eval` decode images in processes (one per decoder thread, which then
# only copies the pixels into pinned memory), by device type, for the same reason: beside a GPU,
# decoder threads contend for the interpreter lock with the thread that launches kernels. On an
# H100 a model call in a folder run took 11.0 ms per ProxyCLIP image with decoding in processes,
# 14.1 in threads (NACLIP 3.2 and 4.7): 84 against 74 images/s end to end (NACLIP 279 against 256;
# benchmarks/bench_throughput.py).
READER_PROCESSES = {"cpu": False, "cuda": True}
# Writer processes take the cores the model's thread and the decoder threads leave (a torchrun
# node's cores shared among its ranks), up to this many. An image's files take about 6 ms of
# one core here with an overlay, under 1 ms without (300–600 px, 21 classes;
# benchmarks/bench_outputs.py; a plain write took about 3× as long on an H200 machine), so a
# GPU that segments a few hundred images a second needs several writers for overlays.
# Each holds about 50 MB (numpy, Pillow and fbseg's output code; no torch).
MAX_WRITER_PROCESSES = 16
# Windows of one size share a forward up to this many tokens (windows × the larger of CLIP's
# and the host's own model's tokens per window): 32 CLIP B/16 windows of 336² (441 tokens),
# 8 with ProxyCLIP's DINO B/8 proxy (1764 tokens). Small batches leave a GPU waiting on the
# host; on an H200 NACLIP ran 1.6× faster at 32 windows per forward than at 8, ProxyCLIP
# 14% slower at 32 than at 8 (benchmarks/bench_throughput.py --windows, in a version that
# did not yet warm every call it timed: a new batch shape's first use was timed too).
TOKENS_PER_FORWARD = 32 * 441
# Whether a Segmenter beside a GPU replays its window-batch forwards as CUDA graphs
# (fbseg/pipeline/graphs.py) unless told. Off until a GPU run of
# benchmarks/bench_throughput.py shows them faster and equal to the forwards they replay.
CUDA_GRAPHS = False
# Windows' logits are upsampled to their crops' full size this many bytes at a time (float32
# B×C×h×w): about 6 windows of 336² with 46 names per call rather than one each, without
# the whole batch at full resolution.
STITCH_BYTES = 128 * 2**20
# The images of a call are post-processed side by side, their per-name logits at full size
# laid in one row, up to this many bytes of float32 logits per pass, by device type (others
# as "cpu"): each step (×scale, softmax, name → class maximum, labels, what the statistics
# need) is then one operation per pass instead of one per image, and beside a GPU each is a
# kernel launch the host makes (a NACLIP call of 16 images of 300–600 px with 46 names: 629
# operations that run a kernel instead of 781; bench_throughput.py --post-pass-mb 256 0). A
# pass holds up to about three times its bytes at once, as one image does; one that runs out
# of memory is done again image by image. 0: one image at a time, as on a CPU, where an
# operation costs little beside its work and one image's arrays stay in the caches.
POST_PASS_BYTES = {"cpu": 0, "cuda": 256 * 2**20}


class Refinement(str, Enum):
    """Post-processing of the per-name logits at the image size."""

    NONE = "none"
    PAMR = "pamr"  # pixel-adaptive mask refinement (SCLIP's and NACLIP's pamr.py)


@dataclass(frozen=True)
class SegmentConfig:
    """How one image is segmented.

    short_side:     mmseg's keep-ratio resize: the short side to this, the long side at most
                    2048; None keeps the image's size.
    window, stride: the sliding window over the resized image, in pixels; window None runs
                    the whole image at once, unpadded (NACLIP's mode for VOC).
    logit_scale:    cosine logits × this before the softmax over names.
    prob_threshold: pixels whose top class probability is below this go to class 0 (the
                    reference's ``prob_thd``; 0 disables it).
    feedback:       FSA on (the host's attention replaced by A') or off (the host alone).
    lam:            FSA's λ; None takes the backbone's or the proxy's from their registries.
    refine:         PAMR on the per-name logits at the image size, with ``pamr_steps``
                    iterations over the neighbours at ``pamr_dilations``.
    area_threshold: SCLIP's ``area_thd``: a class other than 0 whose predicted area is not
                    above this share of all such area has its probabilities zeroed.
    renormalize:    probabilities divided by their sum over classes after the name → class
                    maximum (NACLIP's; changes probabilities, never labels).
    """

    short_side: int | None = 336
    window: int | None = 336
    stride: int = 112
    logit_scale: float = 40.0
    prob_threshold: float = 0.0
    feedback: bool = True
    lam: float | None = None
    refine: Refinement = Refinement.NONE
    pamr_steps: int = 10
    pamr_dilations: tuple[int, ...] = (8, 16)
    area_threshold: float | None = None
    renormalize: bool = False

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **values) -> SegmentConfig:
        """A copy with exactly these values (None included: ``short_side=None`` means no
        resize). An unknown name is a ConfigError."""
        unknown = sorted(set(values) - set(self.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown setting {unknown[0]!r}; known: {', '.join(self.field_names())}"
            )
        if "refine" in values:
            try:
                values["refine"] = Refinement(values["refine"])
            except ValueError:
                choices = " or ".join(r.value for r in Refinement)
                raise ConfigError(
                    f"unknown refinement {values['refine']!r}; use {choices}"
                ) from None
        if "pamr_dilations" in values:
            values["pamr_dilations"] = tuple(int(d) for d in values["pamr_dilations"])
        return dataclasses.replace(self, **values) if values else self

    def with_flags(self, **flags) -> SegmentConfig:
        """A copy overridden by the flags a user gave; a flag left unset (None) keeps the value."""
        return self.replace(**{k: v for k, v in flags.items() if v is not None})

    def check(self, patch: int | None = None) -> None:
        """Fail early, with the setting named, on values no window loop can use; with the
        model's ``patch`` size also on a window or short side smaller than a patch (None:
        those two are left for when it is known)."""
        if self.window is not None:
            if self.stride < 1:
                raise ConfigError("stride must be ≥ 1")
            if patch is not None and self.window < patch:
                raise ConfigError(f"window must be ≥ the patch size ({patch})")
            if self.stride > self.window:
                raise ConfigError("stride larger than the window leaves pixels uncovered")
        if self.logit_scale <= 0:
            raise ConfigError("logit scale must be positive")
        if self.short_side is not None and patch is not None and self.short_side < patch:
            raise ConfigError(f"short side must be ≥ the patch size ({patch})")
        if not 0.0 <= self.prob_threshold <= 1.0:
            raise ConfigError("the probability threshold must lie in [0, 1]")
        if self.refine is Refinement.PAMR and self.pamr_steps < 1:
            raise ConfigError("--pamr-steps must be at least 1")
        if not self.pamr_dilations or min(self.pamr_dilations) < 1:
            raise ConfigError("--pamr-dilations takes positive whole numbers, e.g. 8,16")
        if self.area_threshold is not None and not 0.0 <= self.area_threshold < 1.0:
            raise ConfigError("the area threshold must lie in [0, 1)")

    def protocol(self) -> dict:
        """The settings that shape the output besides FSA's (for reports and cache keys);
        the refinement and post-processing steps only when they are on."""
        out = {
            "short_side": self.short_side,
            "window": self.window,
            "stride": self.stride,
            "logit_scale": self.logit_scale,
            "prob_threshold": self.prob_threshold,
        }
        if self.refine is not Refinement.NONE:
            out.update(
                refine=self.refine.value,
                pamr_steps=self.pamr_steps,
                pamr_dilations=list(self.pamr_dilations),
            )
        if self.area_threshold is not None:
            out["area_threshold"] = self.area_threshold
        if self.renormalize:
            out["renormalize"] = True
        return out


DEFAULTS = SegmentConfig()
