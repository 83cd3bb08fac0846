"""fbseg: open-vocabulary semantic segmentation with CLIP and feedback self-adaptive attention."""

from __future__ import annotations

__version__ = "0.1.0"

from fbseg.classes import ClassList, parse_classes, read_class_file  # noqa: E402
from fbseg.errors import (  # noqa: E402
    ConfigError,
    FbsegError,
    InputError,
    NoInputError,
    OutputError,
    UnknownNameError,
    WeightsUnavailableError,
)
from fbseg.pipeline.config import DEFAULTS, SegmentConfig  # noqa: E402
from fbseg.result import ClassSummary, SegmentationResult  # noqa: E402


def __getattr__(name: str):
    """Import the torch-heavy parts on first use, so reading results stays light."""
    if name == "Segmenter":
        from fbseg.pipeline.segmenter import Segmenter

        return Segmenter
    if name == "load_engine":
        from fbseg.engines import load_engine

        return load_engine
    if name == "Sam3Segmenter":
        from fbseg.pipeline.sam3 import Sam3Segmenter

        return Sam3Segmenter
    if name == "segment_folder":
        from fbseg.runs.folder import segment_folder

        return segment_folder
    if name in ("list_hosts", "list_backbones", "list_proxies", "list_presets", "list_engines"):
        from fbseg import catalog

        return getattr(catalog, name)
    raise AttributeError(name)


__all__ = [
    "Segmenter",
    "SegmentConfig",
    "DEFAULTS",
    "segment_folder",
    "load_engine",
    "Sam3Segmenter",
    "SegmentationResult",
    "ClassSummary",
    "ClassList",
    "parse_classes",
    "read_class_file",
    "FbsegError",
    "ConfigError",
    "UnknownNameError",
    "WeightsUnavailableError",
    "InputError",
    "OutputError",
    "NoInputError",
    "list_hosts",
    "list_backbones",
    "list_proxies",
    "list_presets",
    "list_engines",
    "__version__",
]
