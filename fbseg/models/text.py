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
    """(C, E) fp32: per name, each template's embedding L2-normalised, averaged, re-normalised."""
    templates = imagenet_templates()
    prompts = [t(name) for name in names for t in templates]
    tokens = tokenizer(prompts)
    out = []
    for start in range(0, len(prompts), chunk):
        emb = clip.encode_text(tokens[start : start + chunk].to(device)).float()
        out.append(F.normalize(emb, dim=-1))
    per_prompt = torch.cat(out).reshape(len(names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


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
