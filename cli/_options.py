"""Options shared by several commands (one definition, one help text)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

M, O, P, W = "Model", "Output", "Performance", "Protocol"

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="open_clip ViT architecture with a class token (ViT-B-16, ViT-L-14, ViT-H-14, ...); SigLIP, CLIPA, CoCa, ResNet and timm towers are refused.", rich_help_panel=M)]
PretrainedOpt = Annotated[Optional[str], typer.Option("--pretrained", help="open_clip pretrained tag (default: openai, openai, laion2b_s32b_b79k); its table entry sets the activation (QuickGELU for openai) and mean/std. With --checkpoint: the file is a local copy of this tag.", rich_help_panel=M)]
CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", help="Local CLIP weights: a state dict (architecture of --model, or of --pretrained TAG if given), or an OpenAI TorchScript .pt (QuickGELU).", rich_help_panel=M)]
HostOpt = Annotated[str, typer.Option("--host", help="maskclip | sclip | clearclip | naclip | proxyclip.", rich_help_panel=M)]
ProxyOpt = Annotated[str, typer.Option("--proxy", help="Proxy for --host proxyclip: dino | dinov2 | sam | mae (and -l/-h variants).", rich_help_panel=M)]
ProxyCheckpointOpt = Annotated[Optional[Path], typer.Option("--proxy-checkpoint", help="Local proxy weights (state dict of the timm model).", rich_help_panel=M)]
FeedbackOpt = Annotated[bool, typer.Option("--feedback/--no-feedback", help="FSA on or off.", rich_help_panel=M)]
LamOpt = Annotated[Optional[float], typer.Option("--lam", help="FSA's λ (default by backbone/proxy).", rich_help_panel=M)]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto | cpu | cuda | mps.", rich_help_panel=P)]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA, else fp32) | fp32 | fp16 | bf16.", rich_help_panel=P)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables on stderr.", rich_help_panel=O)]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.", rich_help_panel=P)]


def load_segmenter(*, model, pretrained, checkpoint, host, proxy, proxy_checkpoint, feedback, lam,
                   device, precision, show: bool):
    """Print what is loading, then build the Segmenter (the library does the work)."""
    from fbseg.pipeline.segmenter import Segmenter

    from ._console import err

    if show:
        err.print(f"loading {model} + {host}{' (' + proxy + ')' if host == 'proxyclip' else ''}"
                  f"{' + FSA' if feedback else ''} ...")
    return Segmenter.from_pretrained(model, pretrained=pretrained, checkpoint=checkpoint, host=host,
                                     proxy=proxy, proxy_checkpoint=proxy_checkpoint,
                                     feedback=feedback, lam=lam, device=device, precision=precision)


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
