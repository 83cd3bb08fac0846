"""Reading images (any mode, EXIF orientation, size limit) and writing files atomically."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from fbseg.errors import ConfigError, InputError, OutputError


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give; mkstemp alone gives 0600
MAX_PIXELS = 100_000_000  # a clear limit instead of a decompression bomb
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB; 16-bit greys scaled down, transparency dropped (onto black)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def read_image(source: ImageLike) -> np.ndarray:
    """An image as (H, W, 3) uint8 RGB, EXIF orientation applied.

    Accepts a path, a PIL image or an array ((H, W) grey or (H, W, 3|4) uint8).
    Raises InputError with a one-line reason for anything unreadable.
    """
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
            raise InputError(f"array must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
        return np.ascontiguousarray(arr[..., :3])
    if isinstance(source, Image.Image):
        return np.asarray(_to_rgb(ImageOps.exif_transpose(source)))
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image")
    Image.MAX_IMAGE_PIXELS = None  # checked below with our own message
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise InputError(
                    f"{path}: image too large ({img.width}×{img.height}; limit {MAX_PIXELS:,} pixels)"
                )
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img))
    except InputError:
        raise
    except Image.UnidentifiedImageError:
        raise InputError(f"{path}: not an image") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (removed after the run started?)") from None
    except PermissionError:
        raise InputError(f"{path}: cannot read (permission denied)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise InputError(f"{path}: unreadable image ({reason})") from None
    return np.asarray(rgb)


def _same_content(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def _temporary_of(entry: str) -> str | None:
    """The file name a temporary of ``atomic_write_bytes`` (``.NAME.XXXXXXXX.tmp``) stands
    for, or None for any other name."""
    if not (entry.startswith(".") and entry.endswith(".tmp")):
        return None
    name, dot, _ = entry[1 : -len(".tmp")].rpartition(".")
    return name if dot and name else None


def check_writable_folder(folder: str | Path) -> None:
    """An ``OutputError`` (one line, the reason) unless files can be made in ``folder``, or
    where it does not exist yet, in the folder it would be made in: checked before a run
    does any work. The probe is a file without a name (gone when closed); nothing is made
    or left, so ranks of one run checking the same new folder at once cannot disturb each
    other. A path that exists and is not a folder is a ``ConfigError``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output {folder} exists and is not a folder")
    nearest = folder  # the folder itself, or the ancestor it would be made in
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    try:
        if not nearest.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=nearest):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write into {folder} ({exc.strerror or exc})") from None


def remove_stale_temporaries(paths: Iterable[str | Path]) -> int:
    """Delete the temporaries that a killed writer left beside any of ``paths``; returns
    how many. Each folder is listed once, however many of ``paths`` it holds (a run's
    output folder may hold many thousands of files), and only temporaries of these names
    are touched."""
    by_folder: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        by_folder.setdefault(path.parent, set()).add(path.name)
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:  # no folder yet: nothing left in it
            continue
        for entry in entries:
            if _temporary_of(entry.name) in names:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError:
                    pass
    return removed


_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def _link_or_rename(tmp: str, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (FileExistsError).

    A hard link refuses an existing target atomically; on file systems without hard links
    (FAT, some network shares) the target is checked, then the file renamed.
    """
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = False) -> None:
    """Write to a temporary file beside ``path`` and rename it into place.

    A crash never leaves a partial file under the final name; without ``overwrite`` an
    existing file is never replaced (one with exactly these bytes counts as written).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_or_rename(tmp, path)
    except FileExistsError:
        os.unlink(tmp)
        if _same_content(path, data):
            return  # left by an interrupted run of the same work: nothing to replace
        raise OutputError(f"{path}: exists (use --overwrite)") from None
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
