"""Pictures for viewing: the fast PNG encoder, the table-driven blend, the cached legend."""

import io
import math
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fbseg.viz import (
    DIFF_COLOUR,
    binary_png,
    blend,
    disagreement,
    indexed_png,
    legend_panel,
    palette,
    png_bytes,
)
from fbseg.viz.overlay import _font
from fbseg.viz.png import rgb_png


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each chunk, checking every length and CRC on the way (PNG §5.3)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        out.append((kind, payload))
        pos += 12 + length
    return out


def _unfilter_naively(raw: bytes, h: int, row_bytes: int) -> np.ndarray:
    """Undo PNG's per-row filters 0 (none) and 2 (up), byte by byte: (h, row_bytes) uint8."""
    prev, rows = [0] * row_bytes, []
    for y in range(h):
        line = raw[y * (row_bytes + 1) : (y + 1) * (row_bytes + 1)]
        kind, body = line[0], line[1:]
        assert kind in (0, 2)
        row = [(b + (prev[i] if kind == 2 else 0)) % 256 for i, b in enumerate(body)]
        rows.append(row)
        prev = row
    return np.array(rows, dtype=np.uint8).reshape(h, row_bytes)


def _decoded(data: bytes, colour: int, depth: int, row_bytes: int) -> tuple[np.ndarray, list]:
    """The rows of a PNG we wrote, decoded here (chunks, header, zlib, filters), and its
    chunk types."""
    chunks = _chunks(data)
    width, height, d, c, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (d, c, comp, filt, interlace) == (depth, colour, 0, 0, 0)
    raw = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    assert len(raw) == height * (1 + row_bytes)
    return _unfilter_naively(raw, height, row_bytes), chunks


@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (1, 9), (9, 1), (300, 451)])
def test_rgb_png_decodes_to_the_same_pixels(shape):
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    # photo-like (smooth) and noisy halves, so rows differ and the filter matters
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[: h // 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    data = rgb_png(img)
    chunks = _chunks(data)
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (width, height, depth, colour, comp, filt, interlace) == (w, h, 8, 2, 0, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == h * (1 + 3 * w)
    assert np.array_equal(_unfilter_naively(raw, h, 3 * w).reshape(h, w, 3), img)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), img)


def test_rgb_png_takes_views_and_refuses_other_shapes():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    view = img[::2, 5:, :]  # not contiguous
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rgb_png(view)))), view)
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4, 3))):
        with pytest.raises(ValueError):
            rgb_png(bad)


SHAPES = [(37, 53), (1, 1), (1, 9), (9, 1), (5, 8), (6, 17)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("classes", [1, 5, 256])
def test_label_maps_are_indexed_pngs_with_their_palette(shape, classes):
    h, w = shape
    labels = np.random.default_rng(classes + h).integers(0, classes, (h, w))
    labels[0, 0] = classes - 1  # the top index is used
    colours = palette(classes)
    data = indexed_png(labels, colours)
    rows, chunks = _decoded(data, colour=3, depth=8, row_bytes=w)
    assert [k for k, _ in chunks] == [b"IHDR", b"PLTE", b"IDAT", b"IEND"]
    assert chunks[1][1] == bytes(colours.astype(np.uint8).ravel())  # K entries, in order
    assert np.array_equal(rows, labels)
    back = Image.open(io.BytesIO(data))
    assert back.mode == "P"
    assert np.array_equal(np.asarray(back), labels)
    assert np.array_equal(np.asarray(back.getpalette()[: 3 * classes]).reshape(-1, 3), colours)


@pytest.mark.parametrize("classes", [257, 300])
def test_label_maps_past_256_classes_are_16_bit_grey(classes):
    labels = np.random.default_rng(0).integers(0, classes, (7, 13)).astype(np.uint16)
    labels[3, 4] = classes - 1
    data = indexed_png(labels, palette(classes))
    rows, chunks = _decoded(data, colour=0, depth=16, row_bytes=2 * 13)
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert np.array_equal(rows[:, 0::2].astype(int) * 256 + rows[:, 1::2], labels)  # big-endian
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))).astype(int), labels)


def test_label_maps_refuse_what_a_png_cannot_hold():
    for bad in (
        np.zeros(4, int),
        np.zeros((0, 3), int),
        np.full((2, 2), -1),
        np.full((2, 2), 70000),
    ):
        with pytest.raises(ValueError):
            indexed_png(bad, palette(3))


@pytest.mark.parametrize("shape", SHAPES)
def test_binary_masks_are_1_bit_pngs(shape):
    h, w = shape
    mask = np.random.default_rng(w).random((h, w)) < 0.4
    data = binary_png(mask)
    rows, _ = _decoded(data, colour=0, depth=1, row_bytes=(w + 7) // 8)
    bits = [[(rows[y, x // 8] >> (7 - x % 8)) & 1 for x in range(w)] for y in range(h)]
    assert np.array_equal(np.array(bits, dtype=bool), mask)  # first pixel in the high bit
    back = Image.open(io.BytesIO(data))
    assert back.mode == "1"
    assert np.array_equal(np.asarray(back), mask)


# Encodes one picture, one label map and one mask, and prints their digests: run in this
# process and in fresh ones.
_ENCODE_AND_DIGEST = """
import hashlib
import numpy as np
from fbseg.viz import binary_png, indexed_png, palette
from fbseg.viz.png import rgb_png
rng = np.random.default_rng(3)
rgb = rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)
ramp = np.add.outer(np.arange(240), np.arange(320))[..., None] // 3 + np.arange(3) * 40
photo = (ramp + rng.integers(0, 24, (240, 320, 3))).astype(np.uint8)  # smooth, with grain
labels = rng.integers(0, 7, (19, 23))
junk = [bytes(rng.integers(0, 256, 300_000, dtype=np.uint8)) for _ in range(5)]  # a used heap
del junk
files = [rgb_png(rgb), rgb_png(photo), indexed_png(labels, palette(7)), binary_png(labels == 2)]
print(" ".join(hashlib.sha256(f).hexdigest() for f in files))
"""


def test_the_same_pixels_give_the_same_bytes_in_any_process():
    """A resumed run compares the files a killed run finished byte for byte, and writer
    processes must write what writer threads write: the encoding depends on the pixels
    alone (a faster deflate library gave two different streams for one mask, in different
    processes)."""
    import contextlib
    import subprocess
    import sys

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(_ENCODE_AND_DIGEST, {})
    expected = printed.getvalue().split()
    assert len(expected) == 4
    for _ in range(3):
        run = subprocess.run(
            [sys.executable, "-c", _ENCODE_AND_DIGEST], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == expected


def test_fast_png_bytes_keeps_every_mode_lossless():
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 17, 3), dtype=np.uint8))
    grey = Image.fromarray(rng.integers(0, 256, (12, 17), dtype=np.uint8))
    for img in (rgb, grey):
        back = Image.open(io.BytesIO(png_bytes(img, fast=True)))
        assert back.mode == img.mode
        assert np.array_equal(np.asarray(back), np.asarray(img))


@pytest.mark.parametrize("opacity", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_blend_matches_the_formula_per_pixel(opacity):
    rng = np.random.default_rng(2)
    K = 300  # more classes than a byte holds
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    labels = rng.integers(0, K, (9, 11))
    colours = palette(K)
    before = img.copy()
    m = round(opacity * 255)  # the 8-bit alpha
    expected = np.empty_like(img)
    for y in range(9):
        for x in range(11):
            for c in range(3):
                mixed = Fraction(
                    (255 - m) * int(img[y, x, c]) + m * int(colours[labels[y, x], c]), 255
                )
                expected[y, x, c] = math.floor(mixed + Fraction(1, 2))
    assert np.array_equal(blend(img, labels, colours, opacity), expected)
    assert np.array_equal(img, before)  # the caller's image is left as it was


def test_legend_rows_look_as_if_drawn_directly():
    labels = ["cat", "sofa; couch", "a long class name with spaces", "x", "jug", "Ÿ"]
    colours = palette(len(labels))
    fractions = [0.0, 0.1234, 1.0, 0.5, 0.25, 0.0]
    for _ in range(2):  # the second time from the cached text
        panel = legend_panel(labels, colours, fractions, 90)
        size = max(11, min(18, 90 // len(labels) // 2))
        font, row = _font(size), size + 8
        expected = Image.new("RGB", panel.size, (255, 255, 255))
        draw = ImageDraw.Draw(expected)
        for i, (label, colour, frac) in enumerate(zip(labels, colours, fractions)):
            y = 6 + i * row
            draw.rectangle(
                [8, y, 8 + size, y + size], fill=tuple(int(v) for v in colour), outline=(0, 0, 0)
            )
            draw.text((16 + size, y), f"{label}  {100 * frac:.1f}%", fill=(0, 0, 0), font=font)
        assert np.array_equal(np.asarray(panel), np.asarray(expected))


def test_disagreement_dims_to_grey_and_marks_changed_pixels():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    img[0, 0], img[0, 1] = 255, 0  # the extremes
    before = rng.integers(0, 3, (7, 9))
    after = before.copy()
    after[2:4, 3:7] = (after[2:4, 3:7] + 1) % 3
    out = disagreement(img, before, after)
    for y in range(7):
        for x in range(9):
            if before[y, x] != after[y, x]:
                expected = DIFF_COLOUR
            else:
                mean = Fraction(sum(int(v) for v in img[y, x]), 3)
                expected = (math.floor(Fraction(35, 100) * mean + 100 + Fraction(1, 2)),) * 3
            assert tuple(out[y, x]) == tuple(expected), (y, x)
