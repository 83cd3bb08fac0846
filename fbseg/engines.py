"""The engine registry: what turns an image and class names into per-class scores.

``clip`` is CLIP + a host attention + FSA (the default); ``sam3`` is SAM 3's semantic head.
Everything after per-class scores (outputs, folder runs, eval, torchrun) is shared. Entries
are plain data: listing them imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from fbseg.registry import Registry

DEFAULT_ENGINE = "clip"


@dataclass(frozen=True)
class EngineEntry:
    """An engine: its loader ("module:callable", keyword arguments as documented there),
    what it is, and the optional dependency it needs (None: always installed)."""

    name: str
    loader: str
    description: str
    extra: str | None = None

    def load(self, **kwargs):
        module, attr = self.loader.split(":")
        target = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
        return target(**kwargs)


ENGINES: Registry[EngineEntry] = Registry("engine")
for _entry in (
    EngineEntry(
        "clip",
        "fbseg.pipeline.segmenter:Segmenter.from_pretrained",
        "CLIP + host attention + FSA (training-free; every host, preset and explain)",
    ),
    EngineEntry(
        "sam3",
        "fbseg.pipeline.sam3:Sam3Segmenter.from_pretrained",
        "SAM 3's semantic head (facebook/sam3, gated, SAM License)",
        extra="sam3",
    ),
):
    ENGINES.register(_entry.name, _entry)


def load_engine(name: str = DEFAULT_ENGINE, **kwargs):
    """An engine by name, loaded with its loader's keyword arguments:
    ``load_engine("sam3", checkpoint="sam3-folder", device="cuda")``."""
    return ENGINES.get(name).load(**kwargs)
