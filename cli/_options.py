"""Options shared by several commands: one definition, one help text, choices and defaults
read from the library's registries and its ``SegmentConfig`` (flags default to None and only
override)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from fbseg.engines import DEFAULT_ENGINE, ENGINES
from fbseg.hosts import DEFAULT_HOST, HOSTS
from fbseg.models.clip import BACKBONES, DEFAULT_BACKBONE
from fbseg.models.proxy_specs import DEFAULT_PROXY, PROXIES
from fbseg.models.weights import check_weights_file
from fbseg.pipeline.config import (
    CUDA_GRAPHS,
    DEFAULTS,
    IMAGES_PER_CALL,
    Refinement,
    SegmentConfig,
)
from fbseg.presets import DEFAULT_PRESET, PRESETS, Preset

MODEL, OUTPUT, PERF, PROTOCOL = "Model", "Output", "Performance", "Protocol"

_TAGS = ", ".join(f"{name}: {spec.pretrained}" for name, spec in BACKBONES)

EngineOpt = Annotated[
    Optional[str],
    typer.Option(
        "--engine",
        help=f"{' | '.join(ENGINES.names())} (default {DEFAULT_ENGINE}): CLIP + host + FSA, or "
        "SAM 3's semantic head (needs fbseg[sam3] and the gated facebook/sam3 weights, or "
        "--checkpoint DIR written by Sam3Model.save_pretrained).",
        rich_help_panel=MODEL,
        show_default=False,
    ),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help=f"open_clip ViT architecture with a class token ({', '.join(BACKBONES.names())}, ...; default {DEFAULT_BACKBONE}); SigLIP, CLIPA, CoCa, ResNet and timm towers are refused.",
        rich_help_panel=MODEL,
        show_default=False,
    ),
]
PretrainedOpt = Annotated[
    Optional[str],
    typer.Option(
        "--pretrained",
        help=f"open_clip pretrained tag (default {_TAGS}); its table entry sets the activation (QuickGELU for openai) and mean/std. With --checkpoint: the file is a local copy of this tag.",
        rich_help_panel=MODEL,
    ),
]
CheckpointOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--checkpoint",
        help="Local CLIP weights: a state dict (architecture of --model, or of --pretrained TAG if given), or an OpenAI TorchScript .pt (QuickGELU).",
        rich_help_panel=MODEL,
    ),
]
HostOpt = Annotated[
    Optional[str],
    typer.Option(
        "--host",
        help=" | ".join(HOSTS.names()) + f" (default: the preset's; {DEFAULT_HOST} for fsa).",
        rich_help_panel=MODEL,
        show_default=False,
    ),
]
PresetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--preset",
        help=f"{' | '.join(PRESETS.names())} (default {DEFAULT_PRESET}): a method's host and its "
        "official protocol (segment/explain: its COCO-Stuff config; eval: the dataset's); "
        "explicit flags override it. FSA stays on unless --no-feedback.",
        rich_help_panel=PROTOCOL,
        show_default=False,
    ),
]
RefineOpt = Annotated[
    Optional[str],
    typer.Option(
        "--refine",
        help=f"{' | '.join(r.value for r in Refinement)}: PAMR refines the mask edges "
        "(default: the preset's, none for fsa).",
        rich_help_panel=PROTOCOL,
        show_default=False,
    ),
]
PamrStepsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--pamr-steps",
        help=f"PAMR iterations (default {DEFAULTS.pamr_steps}; implies --refine pamr).",
        rich_help_panel=PROTOCOL,
        show_default=False,
    ),
]
PamrDilationsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--pamr-dilations",
        help="PAMR neighbourhood dilations, e.g. 8,16 (default "
        f"{','.join(map(str, DEFAULTS.pamr_dilations))}; implies --refine pamr).",
        rich_help_panel=PROTOCOL,
        show_default=False,
    ),
]
ProxyOpt = Annotated[
    Optional[str],
    typer.Option(
        "--proxy",
        help=f"Proxy for the hosts that use one: {' | '.join(PROXIES.names())} (default {DEFAULT_PROXY}).",
        rich_help_panel=MODEL,
        show_default=False,
    ),
]
ProxyCheckpointOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--proxy-checkpoint",
        help="Local proxy weights (state dict of the timm model).",
        rich_help_panel=MODEL,
    ),
]
FeedbackOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--feedback/--no-feedback",
        help=f"FSA on or off (default {'on' if DEFAULTS.feedback else 'off'}).",
        rich_help_panel=MODEL,
        show_default=False,
    ),
]
LamOpt = Annotated[
    Optional[float],
    typer.Option("--lam", help="FSA's λ (default by backbone/proxy).", rich_help_panel=MODEL),
]
ShortSideOpt = Annotated[
    Optional[int],
    typer.Option(
        "--short-side",
        help=f"Resize so the short side is this, long side ≤ 2048 (default {DEFAULTS.short_side}).",
        rich_help_panel=PROTOCOL,
        show_default=False,
    ),
]
WindowOpt = Annotated[
    Optional[int],
    typer.Option(
        "--window",
        help=f"Sliding window size (default {DEFAULTS.window}; 0: the whole image at once).",
        rich_help_panel=PROTOCOL,
        show_default=False,
    ),
]
StrideOpt = Annotated[
    Optional[int],
    typer.Option(
        "--stride",
        help=f"Sliding window stride (default {DEFAULTS.stride}).",
        rich_help_panel=PROTOCOL,
        show_default=False,
    ),
]
LogitScaleOpt = Annotated[
    Optional[float],
    typer.Option(
        "--logit-scale",
        help=f"Logit scale before the softmax (default {DEFAULTS.logit_scale:g}).",
        rich_help_panel=PROTOCOL,
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", "-d", help="auto | cpu | cuda | mps.", rich_help_panel=PERF)
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto (fp16 on CUDA, else fp32) | fp32 | fp16 | bf16.",
        rich_help_panel=PERF,
    ),
]
CudaGraphsOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--cuda-graphs/--no-cuda-graphs",
        help=(
            "Replay each window batch's forward as a CUDA graph: one launch instead of "
            f"hundreds (CUDA only; default {'on' if CUDA_GRAPHS else 'off'})."
        ),
        rich_help_panel=PERF,
        show_default=False,
    ),
]
BatchOpt = Annotated[
    Optional[int],
    typer.Option(
        "--batch",
        min=1,
        help=(
            "Images whose windows share one model batch (default: "
            f"{IMAGES_PER_CALL['cpu']} on CPU, {IMAGES_PER_CALL['cuda']} on GPU)."
        ),
        rich_help_panel=PERF,
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress or tables on stderr.", rich_help_panel=OUTPUT),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.", rich_help_panel=PERF)]
ClassesOpt = Annotated[
    Optional[str], typer.Option("--classes", "-c", help='Classes, e.g. "cat,sofa; couch".')
]
ClassesFileOpt = Annotated[
    Optional[Path], typer.Option("--classes-file", help="One class per line (names split on ';').")
]
OutputOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Output folder.", rich_help_panel=OUTPUT)
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Rewrite existing outputs (default: skip).", rich_help_panel=OUTPUT
    ),
]


@dataclass(frozen=True)
class ModelChoice:
    """Which networks to load and where: the model flags of every command."""

    model: str
    pretrained: str | None
    checkpoint: Path | None
    host: str
    proxy: str | None
    proxy_checkpoint: Path | None
    device: str
    precision: str

    @classmethod
    def from_flags(cls, flags: dict, preset: Preset) -> ModelChoice:
        """The model flags, the host defaulting to the preset's; an unknown host or proxy, or
        a weights file that is not there, fails here, before anything loads."""
        values = {k: flags[k] for k in cls.__dataclass_fields__}
        values["host"] = values["host"] or preset.host
        values["model"] = values["model"] or DEFAULT_BACKBONE
        HOSTS.get(values["host"]).check_choice(values["proxy"], values["proxy_checkpoint"])
        if values["checkpoint"] is not None:
            check_weights_file(values["checkpoint"], "--checkpoint")
        check_device_flags(values["device"], values["precision"])
        return cls(**values)

    def label(self) -> str:
        """ "ViT-B-16 + proxyclip (dino)" as the library names the host."""
        uses_proxy = HOSTS.get(self.host).needs_proxy
        return f"{self.model} + {self.host}" + (
            f" ({self.proxy or DEFAULT_PROXY})" if uses_proxy else ""
        )


def protocol_flags(flags: dict, base: SegmentConfig = DEFAULTS) -> SegmentConfig:
    """``base`` overridden by the protocol flags the user gave (unset ones keep its values).
    ``--pamr-steps``/``--pamr-dilations`` imply ``--refine pamr`` unless it is given."""
    from fbseg.errors import ConfigError

    given = {k: flags[k] for k in set(SegmentConfig.field_names()) & set(flags)}
    whole_image = given.get("window") == 0  # --window 0: the whole image at once
    if whole_image:
        given["window"] = None  # with_flags keeps unset values; applied below
    if given.get("pamr_dilations") is not None:
        try:
            given["pamr_dilations"] = tuple(int(d) for d in given["pamr_dilations"].split(","))
        except ValueError:
            raise ConfigError("--pamr-dilations takes whole numbers, e.g. 8,16") from None
    pamr_tuned = given.get("pamr_steps") is not None or given.get("pamr_dilations") is not None
    if pamr_tuned and given.get("refine") is None:
        given["refine"] = Refinement.PAMR
    config = base.with_flags(**given)
    return config.replace(window=None) if whole_image else config


def preset_and_config(flags: dict, dataset: str | None = None) -> tuple[Preset, SegmentConfig]:
    """The preset named by --preset (default fsa) and its config for ``dataset`` (None: the
    one segment and explain use), overridden by the protocol flags given."""
    preset = PRESETS.get(flags.get("preset") or DEFAULT_PRESET)
    config = protocol_flags(flags, preset.config(dataset))
    config.check()  # before anything loads (the patch-size checks wait for the model)
    return preset, config


# Flags that only the CLIP engine understands (a usage error with any other engine).
CLIP_ONLY_FLAGS = {
    "model": "--model",
    "pretrained": "--pretrained",
    "host": "--host",
    "proxy": "--proxy",
    "proxy_checkpoint": "--proxy-checkpoint",
    "feedback": "--feedback/--no-feedback",
    "lam": "--lam",
    "short_side": "--short-side",
    "window": "--window",
    "stride": "--stride",
    "logit_scale": "--logit-scale",
    "preset": "--preset",
    "refine": "--refine",
    "pamr_steps": "--pamr-steps",
    "pamr_dilations": "--pamr-dilations",
    "compare": "--compare",
    "cuda_graphs": "--cuda-graphs/--no-cuda-graphs",
}


def engine_of(flags: dict) -> str:
    """The engine named by --engine; with another engine than CLIP, a CLIP-only flag given
    is a usage error naming it."""
    from fbseg.errors import ConfigError

    engine = ENGINES.get(flags.get("engine") or DEFAULT_ENGINE).name
    if engine != DEFAULT_ENGINE:
        for key, flag in CLIP_ONLY_FLAGS.items():
            value = flags.get(key)
            if (value is True) if key == "compare" else (value is not None):
                raise ConfigError(f"{flag} applies to the clip engine only, not --engine {engine}")
    return engine


def load_engine(
    engine: str, flags: dict, config: SegmentConfig, *, show: bool, device: str | None = None
):
    """The CLIP Segmenter (``load_segmenter``) or another registered engine."""
    if engine == DEFAULT_ENGINE:
        preset = PRESETS.get(flags.get("preset") or DEFAULT_PRESET)
        choice = ModelChoice.from_flags(flags, preset)
        return load_segmenter(
            choice, config, show=show, device=device, cuda_graphs=flags.get("cuda_graphs")
        )
    from ._console import err

    check_device_flags(device or flags["device"], flags["precision"])
    if show:
        err.print(f"loading {engine} ...")
    return ENGINES.get(engine).load(
        checkpoint=flags.get("checkpoint"),
        config=config,
        device=device or flags["device"],
        precision=flags["precision"],
    )


def load_segmenter(
    choice: ModelChoice,
    config: SegmentConfig,
    *,
    show: bool,
    device: str | None = None,
    cuda_graphs: bool | None = None,
):
    """Print what is loading, then build the Segmenter (the library does the work)."""
    from fbseg.pipeline.segmenter import Segmenter

    from ._console import err

    if show:
        err.print(f"loading {choice.label()}{' + FSA' if config.feedback else ''} ...")
        tip = precision_tip(choice.precision, device or choice.device)
        if tip:
            err.print(tip)
    return Segmenter.from_pretrained(
        choice.model,
        pretrained=choice.pretrained,
        checkpoint=choice.checkpoint,
        host=choice.host,
        proxy=choice.proxy,
        proxy_checkpoint=choice.proxy_checkpoint,
        config=config,
        device=device or choice.device,
        precision=choice.precision,
        cuda_graphs=cuda_graphs,
    )


def check_device_flags(device: str, precision: str) -> None:
    """An unknown or absent device, or an unknown precision, fails here: before the loading
    line, not after it."""
    from fbseg.pipeline.device import resolve_device, resolve_precision

    resolve_precision(precision, resolve_device(device))


def precision_tip(precision: str, device: str) -> str:
    """A line for runs left on ``--precision auto`` (fp32) on a CPU that multiplies bf16 in
    hardware, where ``--precision bf16`` is several times faster (``BF16_SPEED_UP``); else
    empty."""
    from fbseg.pipeline.config import BF16_SPEED_UP
    from fbseg.pipeline.device import cpu_has_bf16_matrix_units, resolve_device

    if precision != "auto" or resolve_device(device).type != "cpu":
        return ""
    if not cpu_has_bf16_matrix_units():
        return ""
    return (
        f"tip: --precision bf16 is about {BF16_SPEED_UP}× faster on this CPU "
        "(its labels differ from fp32's on under 1% of the pixels)"
    )


def say_names_to_encode(engine, classes, *, show: bool) -> None:
    """Before the wait of a first use: how many class names go through the text encoder
    (with CLIP, 80 prompts a name; on a CPU about 0.2 s a name). Later runs read them from
    the cache and say nothing."""
    if not show:
        return
    from ._console import err

    new = engine.names_to_encode(classes)
    if new:
        plural = "s" if len(new) > 1 else ""
        err.print(f"encoding {len(new)} class name{plural} not used before (then cached) ...")


def class_list(classes, classes_file, background=None, background_threshold=None):
    """The ClassList from --classes or --classes-file, with the optional background class."""
    from fbseg.classes import parse_classes, read_class_file, with_background
    from fbseg.errors import ConfigError

    if (classes is None) == (classes_file is None):
        raise ConfigError("give exactly one of --classes and --classes-file")
    cl = read_class_file(classes_file) if classes_file else parse_classes(classes)
    if background is not None:
        cl = with_background(cl, background)
    if background_threshold is not None and background is None:
        raise ConfigError("--background-threshold needs --background NAMES")
    return cl
