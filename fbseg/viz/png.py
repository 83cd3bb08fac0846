"""PNG encoders for what a run writes for every image: truecolour pictures (overlays,
diffs), label maps (indexed with their palette, or 16-bit grey past 256 classes) and 1-bit
masks.

Pillow's encoder tries four of PNG's row filters on every row and keeps the best; for an
indexed 600×400 label map that took 5–7 ms, most of what a writer spent on an image without
overlay. Here every row uses the "Up" filter (the byte above, one numpy pass), and the
deflate suits what the rows hold: label maps and masks are runs of one value (zlib's
run-length strategy: about 1.4 ms, a file within 10% of Pillow's); pictures are photographs,
where libdeflate at its fastest level takes less than half of zlib level 1's time, for files
about 3% smaller (an overlay's deflate was most of what a writer spent on it;
benchmarks/bench_outputs.py). The bytes depend on the pixels alone, in any process (a
resumed run compares files byte for byte; both libraries are deterministic for a given
version, which ISA-L, tried before, was not between processes).
"""

from __future__ import annotations

import struct
import zlib

import deflate as libdeflate
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_NONE, FILTER_UP = 0, 2
COLOUR_GREY, COLOUR_RGB, COLOUR_INDEXED = 0, 2, 3
PICTURE_LEVEL = 1  # libdeflate's fastest: photographs barely gain from more search
MAX_PALETTE = 256


def deflate(data: bytes | np.ndarray, runs: bool) -> bytes:
    """A zlib stream (RFC 1950) of ``data`` (bytes, or a C-contiguous array read as its
    bytes), as PNG's IDAT holds it: zlib's run-length matches for ``runs`` (label maps,
    masks), else libdeflate's fastest level (pictures)."""
    if not runs:
        return libdeflate.zlib_compress(data, PICTURE_LEVEL)
    packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    return packer.compress(data) + packer.flush()


def _chunk(kind: bytes, data: bytes) -> bytes:
    """length, type, data, CRC-32 of type + data (PNG spec §5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def up_filtered_rows(rows: np.ndarray) -> np.ndarray:
    """(H, 1 + B) uint8 from (H, B) row bytes: each row's filter byte (Up), then its bytes
    minus the row above's (mod 256; the first row keeps its own, as the row above it counts
    as zeros)."""
    h, b = rows.shape
    out = np.empty((h, 1 + b), dtype=np.uint8)
    out[:, 0] = FILTER_UP
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps: mod 256
    return out


def _png(
    width: int,
    height: int,
    depth: int,
    colour: int,
    rows: np.ndarray,
    palette: bytes = b"",
    runs: bool = True,
) -> bytes:
    """A whole PNG from its filtered rows (H, 1 + B) uint8; ``palette`` is the PLTE payload,
    ``runs`` as in ``deflate``."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    if palette:
        chunks.append(_chunk(b"PLTE", palette))
    chunks += [_chunk(b"IDAT", deflate(rows, runs)), _chunk(b"IEND", b"")]  # no copy of rows
    return PNG_SIGNATURE + b"".join(chunks)


def rgb_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image: 8-bit truecolour, not interlaced."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"rgb_png takes a non-empty (H, W, 3) image, not {rgb.shape}")
    h, w, _ = rgb.shape
    return _png(w, h, 8, COLOUR_RGB, up_filtered_rows(rgb.reshape(h, 3 * w)), runs=False)


def indexed_png(labels: np.ndarray, colours: np.ndarray) -> bytes:
    """A lossless label map, pixel value = class index: indexed 8-bit with ``colours`` (K, 3)
    as its palette while every index fits one (< 256 entries), else 16-bit greyscale (up to
    65,536 classes; the palette is then only in the run's JSON)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or 0 in labels.shape:
        raise ValueError(f"indexed_png takes a non-empty (H, W) label map, not {labels.shape}")
    h, w = labels.shape
    top = int(labels.max())
    if int(labels.min()) < 0 or top > 0xFFFF:
        raise ValueError("a label map holds class indices 0 to 65535")
    entries = max(len(colours), top + 1)
    if entries > MAX_PALETTE:
        wide = np.ascontiguousarray(labels, dtype=">u2").view(np.uint8).reshape(h, 2 * w)
        return _png(w, h, 16, COLOUR_GREY, up_filtered_rows(wide))
    palette = np.zeros((entries, 3), dtype=np.uint8)
    palette[: len(colours)] = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    rows = up_filtered_rows(np.ascontiguousarray(labels, dtype=np.uint8))
    return _png(w, h, 8, COLOUR_INDEXED, rows, palette.tobytes())


def binary_png(mask: np.ndarray) -> bytes:
    """A 1-bit greyscale PNG of a boolean (H, W) mask: white (1) where true."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"binary_png takes a non-empty (H, W) mask, not {mask.shape}")
    h, w = mask.shape
    packed = np.packbits(mask, axis=1)  # each row from its first pixel's high bit, zero-padded
    rows = np.empty((h, 1 + packed.shape[1]), dtype=np.uint8)
    rows[:, 0] = FILTER_NONE
    rows[:, 1:] = packed
    return _png(w, h, 1, COLOUR_GREY, rows)
