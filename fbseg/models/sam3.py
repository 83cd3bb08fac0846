"""SAM 3 (Meta, "Segment Anything with Concepts") through Hugging Face transformers: its
weights, its image processor and its CLIP tokenizer.

The tokenizer and the image processor are the checkpoint folder's own when it has them
(``Sam3Processor.save_pretrained``); otherwise transformers' defaults, with the image size from
the model config and a CLIP BPE tokenizer built from open_clip's vocabulary (the same BPE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbseg.errors import ConfigError, WeightsUnavailableError
from fbseg.models.weights import fetch_pretrained, hf_cached

SAM3_REPO = "facebook/sam3"
TEXT_LENGTH = 32  # Sam3Processor pads every prompt to this many tokens
INSTALL_HINT = 'pip install "fbseg[sam3]"'
LICENCE_HINT = (
    f"SAM 3's weights are gated: accept the SAM License at https://huggingface.co/{SAM3_REPO} "
    "and log in once with `hf auth login`"
)


def require_transformers():
    """transformers' SAM 3 classes, or a one-line usage error naming the extra to install."""
    try:
        from transformers import Sam3Config, Sam3Model
    except ImportError:
        raise ConfigError(
            f"the sam3 engine needs transformers with SAM 3: {INSTALL_HINT}"
        ) from None
    return Sam3Config, Sam3Model


def _bpe_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE vocabulary and merges, built from open_clip's ``bpe_simple_vocab_16e6`` the
    way CLIP's own tokenizer builds its encoder (bytes, bytes + "</w>", merges, specials)."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, pairs


def clip_tokenizer_from_open_clip():
    """A transformers CLIP tokenizer over open_clip's BPE (what SAM 3's processor uses)."""
    from transformers import CLIPTokenizer

    vocab, merges = _bpe_vocabulary()
    return CLIPTokenizer(vocab=vocab, merges=merges)


@dataclass
class Sam3Parts:
    """A loaded SAM 3: the model (eval, fp32, CPU), its image processor and tokenizer."""

    model: Any
    image_processor: Any
    tokenizer: Any
    weights_id: str


def _processor_parts(folder: Path | None, model) -> tuple[Any, Any]:
    from transformers import Sam3ImageProcessor, Sam3Processor

    if folder is not None and (folder / "processor_config.json").is_file():
        processor = Sam3Processor.from_pretrained(str(folder))
        return processor.image_processor, processor.tokenizer
    size = model.config.vision_config.image_size
    return Sam3ImageProcessor(size={"height": size, "width": size}), clip_tokenizer_from_open_clip()


def load_sam3(checkpoint: str | Path | None = None) -> Sam3Parts:
    """SAM 3 from a folder written by ``Sam3Model.save_pretrained`` or from the hub
    (``facebook/sam3``, gated: a refused download says how to get access)."""
    _, Sam3Model = require_transformers()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # fbseg reports loading itself
    if checkpoint is not None:
        folder = Path(checkpoint)
        if not (folder / "config.json").is_file():
            raise WeightsUnavailableError(
                f"--checkpoint {folder}: not a folder written by Sam3Model.save_pretrained"
            )
        try:
            model = Sam3Model.from_pretrained(str(folder))
        except Exception as exc:
            raise WeightsUnavailableError(
                f"--checkpoint {folder}: not readable as SAM 3 ({exc.__class__.__name__})"
            ) from None
        weights = f"sam3|file:{folder.resolve()}|{(folder / 'config.json').stat().st_mtime_ns}"
    else:
        folder = None
        model = fetch_pretrained(SAM3_REPO, "--checkpoint", lambda: _from_hub(Sam3Model))
        weights = f"sam3|{SAM3_REPO}"
    image_processor, tokenizer = _processor_parts(folder, model)
    return Sam3Parts(model.eval(), image_processor, tokenizer, weights)


def _from_hub(Sam3Model):
    try:
        return Sam3Model.from_pretrained(SAM3_REPO)
    except Exception as exc:
        if "gated" in str(exc).lower() or exc.__class__.__name__ in (
            "GatedRepoError",
            "HfHubHTTPError",
        ):
            raise WeightsUnavailableError(
                f"weights for {SAM3_REPO} refused (licence not accepted or not logged in)",
                hint=LICENCE_HINT,
            ) from None
        raise


def is_cached() -> bool:
    return hf_cached(SAM3_REPO)
