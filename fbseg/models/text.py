"""Class-name embeddings: the 80 OpenAI ImageNet templates, averaged, with a disk cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fbseg.io import atomic_write_bytes

log = logging.getLogger("fbseg")
TEMPLATE_SET = "openai_imagenet_80"


def imagenet_templates() -> tuple:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return OPENAI_IMAGENET_TEMPLATES


@torch.inference_mode()
def encode_names(
    clip: torch.nn.Module, tokenizer, names: Sequence[str], device: torch.device, chunk: int = 640
) -> torch.Tensor:
    """(C, E) fp32: per name, each template's embedding L2-normalised, averaged, re-normalised.

    Prompts of one token length go through the text tower together, up to ``chunk`` at a
    time, each group on its own length (``encode_prompts``)."""
    templates = imagenet_templates()
    prompts = [t(name) for name in names for t in templates]
    tokens = tokenizer(prompts)
    per_prompt = None
    for rows in rows_by_length(tokens, chunk):
        emb = F.normalize(encode_prompts(clip, tokens[rows].to(device)).float(), dim=-1)
        if per_prompt is None:
            per_prompt = emb.new_empty((len(prompts), emb.shape[1]))
        per_prompt[rows.to(device)] = emb
    per_prompt = per_prompt.reshape(len(names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def rows_by_length(tokens: torch.Tensor, chunk: int) -> list[torch.Tensor]:
    """Row indices of ``tokens`` (P, context) in groups of one length (the last non-zero,
    i.e. non-padding, position), at most ``chunk`` rows each, together covering every row
    once: a group's tower then runs on its own length, not the longest prompt's."""
    ends = (torch.arange(tokens.shape[1]) * (tokens != 0)).amax(dim=1)
    groups = []
    for end in ends.unique().tolist():
        rows = (ends == end).nonzero().squeeze(1)
        groups += list(rows.split(chunk))
    return groups


class _EncodeText(torch.nn.Module):
    """``clip.encode_text`` as a module's forward, so ``functional_call`` can run it with
    some of the model's tensors swapped for the call."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


def pooled_length(clip: torch.nn.Module, tokens: torch.Tensor) -> int | None:
    """Token positions (a prefix) that decide ``clip.encode_text(tokens)``, or None when the
    whole context does.

    A CLIP text tower pools one position per prompt, its end-of-text token; where its causal
    mask hides every later position from the positions up to the last pooled one, those
    later positions (padding) cannot change the output. Towers that pool otherwise, or
    whose mask lets a position see later ones, keep the whole context.
    """
    mask = getattr(clip, "attn_mask", None)
    pool = getattr(clip, "text_pool_type", None)
    if not isinstance(mask, torch.Tensor) or not hasattr(clip, "positional_embedding"):
        return None
    if pool == "argmax":
        pooled = tokens.argmax(dim=-1)
    elif pool == "eos" and getattr(clip, "text_eos_id", None) is not None:
        pooled = (tokens == clip.text_eos_id).int().argmax(dim=-1)
    else:
        return None
    length = int(pooled.max()) + 1
    if length >= tokens.shape[1] or not torch.isneginf(mask[:length, length:]).all():
        return None
    return length


def encode_prompts(clip: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(tokens)`` (P, E) for tokenised prompts (P, context), run on the
    prefix of positions that decides it (``pooled_length``): the 80 templates fill 12–21 of
    CLIP's 77 positions, so the text tower does about a sixth of the work. open_clip's own
    ``encode_text`` runs, with its position table and causal mask cut to that length."""
    length = pooled_length(clip, tokens)
    if length is None:
        return clip.encode_text(tokens)
    cut = {
        "clip.positional_embedding": clip.positional_embedding[:length],
        "clip.attn_mask": clip.attn_mask[:length, :length],
    }
    return torch.func.functional_call(_EncodeText(clip), cut, (tokens[:, :length],))


def text_cache_root() -> Path:
    """Where class-name embeddings are cached: $FBSEG_CACHE or ~/.cache/fbseg."""
    return Path(os.environ.get("FBSEG_CACHE") or Path.home() / ".cache" / "fbseg")


def text_cache_key(identity: dict) -> str:
    """A folder name from everything that decides an embedding (``identity``: model, weights,
    network, precision, protocol version) and the template set."""
    blob = json.dumps({"identity": identity, "templates": TEMPLATE_SET}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class TextCache:
    """Per-name embeddings on disk under ``root/text/<text_cache_key(identity)>/``.

    A name's file is written atomically; a damaged file is recomputed. ``identity`` None keeps
    the cache in memory only (models without a stable weights identity).
    """

    def __init__(self, root: Path | None, identity: dict | None) -> None:
        self.memory: dict[str, np.ndarray] = {}
        self.folder = None
        if root is not None and identity is not None:
            self.folder = Path(root) / "text" / text_cache_key(identity)
        self.hits = 0
        self.misses = 0
        # the last (names, device) stacked on the device, with the arrays it was made of
        self._last: tuple[tuple, list[np.ndarray], torch.Tensor] | None = None

    def _path(self, name: str) -> Path:
        return self.folder / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".npy")

    def get(self, name: str) -> np.ndarray | None:
        if name in self.memory:
            return self.memory[name]
        if self.folder is None:
            return None
        try:
            arr = np.load(self._path(name))
        except (OSError, ValueError):
            return None
        self.memory[name] = arr
        return arr

    def put(self, name: str, emb: np.ndarray) -> None:
        self.memory[name] = emb
        if self.folder is None:
            return
        try:
            import io as _io

            buf = _io.BytesIO()
            np.save(buf, emb)
            atomic_write_bytes(self._path(name), buf.getvalue(), overwrite=True)
        except OSError as exc:  # a cache that cannot be written is not an error
            log.debug("text cache not written: %s", exc)

    def uncached(self, names: Sequence[str]) -> list[str]:
        """The names (each once, in order) with no embedding in memory or on disk yet: what
        a call would run through the text encoder."""
        return [n for n in dict.fromkeys(names) if self.get(n) is None]

    def embeddings(self, clip, tokenizer, names: Sequence[str], device) -> torch.Tensor:
        """(C, E) fp32 on ``device`` for ``names``, encoding only the missing ones."""
        found = {n: self.get(n) for n in dict.fromkeys(names)}
        missing = [n for n, e in found.items() if e is None]
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = encode_names(clip, tokenizer, missing, device).cpu().numpy()
            for name, emb in zip(missing, fresh):
                self.put(name, emb)
                found[name] = emb
        arrays = [found[n] for n in names]
        key = (tuple(names), str(device))
        last = self._last
        if last is not None and last[0] == key and all(a is b for a, b in zip(last[1], arrays)):
            return last[2]  # the same names again (every call of a run): no copy to the device
        stacked = torch.from_numpy(np.stack(arrays)).to(device)
        self._last = (key, arrays, stacked)
        return stacked
