"""The eight benchmarks: where their files are, and the paper's protocol for each, as data.

Layouts are those mmseg's dataset preparation produces; an image is paired with its label
map by name, exactly as mmseg's BaseSegDataset does (split list, or every image under the
image folder with the image suffix, sorted).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fbseg.classes import ClassList, parse_classes
from fbseg.errors import InputError
from fbseg.pipeline.config import DEFAULTS, SegmentConfig
from fbseg.registry import Registry

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Layout:
    """Paths relative to the dataset root. ``split`` lists image ids, one per line; without
    it every ``img_suffix`` file under ``images`` is taken (recursively, sorted)."""

    images: str
    labels: str
    img_suffix: str
    label_suffix: str
    split: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: its files, class count and label encoding. The protocol it is run with
    comes from a preset (``fbseg.presets``: the FSA reference's by default)."""

    name: str
    title: str
    layout: Layout
    num_classes: int
    reduce_zero_label: bool

    def config(self, base: SegmentConfig = DEFAULTS, preset: str | None = None) -> SegmentConfig:
        """``base`` (a Segmenter's config: FSA on/off, λ) with the preset's protocol for this
        dataset (default preset: the FSA reference's)."""
        from fbseg.presets import DEFAULT_PRESET, PRESETS

        return PRESETS.get(preset or DEFAULT_PRESET).config(self.name, base)

    @property
    def names_file(self) -> str:
        return f"{self.name}.txt"

    def classes(self) -> ClassList:
        """The reference's class names, one class per line, names split on "; "."""
        text = (
            resources.files("fbseg")
            .joinpath("data")
            .joinpath("names")
            .joinpath(self.names_file)
            .read_text("utf-8")
        )
        return parse_classes([line for line in text.splitlines() if line.strip()])


VOC = Layout(
    "VOCdevkit/VOC2012/JPEGImages",
    "VOCdevkit/VOC2012/SegmentationClass",
    ".jpg",
    ".png",
    "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt",
)
CONTEXT = Layout(
    "VOCdevkit/VOC2010/JPEGImages",
    "VOCdevkit/VOC2010/SegmentationClassContext",
    ".jpg",
    ".png",
    "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt",
)
COCO_OBJECT = Layout(
    "coco_stuff164k/images/val2017",
    "coco_stuff164k/annotations/val2017",
    ".jpg",
    "_instanceTrainIds.png",
)
COCO_STUFF = Layout(
    "coco_stuff164k/images/val2017",
    "coco_stuff164k/annotations/val2017",
    ".jpg",
    "_labelTrainIds.png",
)
CITYSCAPES = Layout(
    "cityscapes/leftImg8bit/val",
    "cityscapes/gtFine/val",
    "_leftImg8bit.png",
    "_gtFine_labelTrainIds.png",
)
ADE20K = Layout(
    "ADEChallengeData2016/images/validation",
    "ADEChallengeData2016/annotations/validation",
    ".jpg",
    ".png",
)

DATASETS: Registry[DatasetSpec] = Registry("dataset")
for _spec in (
    DatasetSpec(
        "voc21",
        "Pascal VOC 2012 (21 classes, background as stuff words)",
        VOC,
        21,
        reduce_zero_label=False,
    ),
    DatasetSpec(
        "voc20", "Pascal VOC 2012 (20 classes, no background)", VOC, 20, reduce_zero_label=True
    ),
    DatasetSpec(
        "context60",
        "Pascal Context (60 classes)",
        CONTEXT,
        60,
        reduce_zero_label=False,
    ),
    DatasetSpec(
        "context59",
        "Pascal Context (59 classes, no background)",
        CONTEXT,
        59,
        reduce_zero_label=True,
    ),
    DatasetSpec(
        "coco-object",
        "COCO-Object (80 things + background)",
        COCO_OBJECT,
        81,
        reduce_zero_label=False,
    ),
    DatasetSpec(
        "coco-stuff", "COCO-Stuff 164k (171 classes)", COCO_STUFF, 171, reduce_zero_label=False
    ),
    DatasetSpec(
        "cityscapes",
        "Cityscapes (19 classes)",
        CITYSCAPES,
        19,
        reduce_zero_label=False,
    ),
    DatasetSpec(
        "ade20k",
        "ADE20K (150 classes)",
        ADE20K,
        150,
        reduce_zero_label=True,
    ),
):
    DATASETS.register(_spec.name, _spec)


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    label: Path


def find_samples(spec: DatasetSpec, root: str | Path) -> list[Sample]:
    """Image/label pairs of the validation split, in mmseg's order; a missing folder, split
    file or label map is an ``InputError`` naming the path expected."""
    root = Path(root)
    lay = spec.layout
    images, labels = root / lay.images, root / lay.labels
    for folder in (images, labels):
        if not folder.is_dir():
            raise InputError(
                f"{spec.name}: expected folder {folder} (see the README's dataset layouts)"
            )
    if lay.split is not None:
        split = root / lay.split
        if not split.is_file():
            raise InputError(f"{spec.name}: expected split list {split}")
        ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    else:
        ids = sorted(
            str(p.relative_to(images))[: -len(lay.img_suffix)]
            for p in images.rglob(f"*{lay.img_suffix}")
            if p.is_file()
        )
    samples = [
        Sample(i, images / f"{i}{lay.img_suffix}", labels / f"{i}{lay.label_suffix}") for i in ids
    ]
    missing = [s for s in samples if not s.label.is_file() or not s.image.is_file()]
    if missing:
        s = missing[0]
        what = s.image if not s.image.is_file() else s.label
        raise InputError(
            f"{spec.name}: {len(missing)} of {len(samples)} samples lack files, e.g. {what}"
        )
    if not samples:
        raise InputError(f"{spec.name}: no images under {images}")
    return samples


def load_label(path: Path, reduce_zero_label: bool):
    """(H, W) uint8 label map as mmseg's LoadAnnotations reads it: 0 → 255 and the rest − 1
    when ``reduce_zero_label``."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        label = np.array(img)  # palette PNGs give indices, as mmseg's 'pillow' backend does
    if label.ndim != 2:
        raise InputError(f"{path}: a label map must have one channel")
    label = label.astype(np.uint8)
    if reduce_zero_label:
        label = label.copy()
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    return label
