"""Pictures for viewing: the fast PNG encoder, the table-driven blend, the cached legend."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fbseg.viz import blend, legend_panel, palette, png_bytes
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


def _unfilter_naively(raw: bytes, h: int, w: int) -> np.ndarray:
    """Undo PNG's per-row filters 0 (none) and 2 (up), byte by byte."""
    stride = 3 * w
    prev, rows = [0] * stride, []
    for y in range(h):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, body = line[0], line[1:]
        assert kind in (0, 2)
        row = [(b + (prev[i] if kind == 2 else 0)) % 256 for i, b in enumerate(body)]
        rows.append(row)
        prev = row
    return np.array(rows, dtype=np.uint8).reshape(h, w, 3)


@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (1, 9), (9, 1)])
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
    assert np.array_equal(_unfilter_naively(raw, h, w), img)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), img)


def test_rgb_png_takes_views_and_refuses_other_shapes():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    view = img[::2, 5:, :]  # not contiguous
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rgb_png(view)))), view)
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4, 3))):
        with pytest.raises(ValueError):
            rgb_png(bad)


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
    K = 300  # more classes than a byte holds: the lookup index must not wrap
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    labels = rng.integers(0, K, (9, 11))
    colours = palette(K)
    expected = np.empty_like(img)
    a = np.float32(opacity)
    for y in range(9):
        for x in range(11):
            for c in range(3):
                v = (np.float32(1) - a) * np.float32(img[y, x, c]) + a * np.float32(
                    colours[labels[y, x], c]
                )
                expected[y, x, c] = int(min(max(v + np.float32(0.5), 0), 255))
    assert np.array_equal(blend(img, labels, colours, opacity), expected)


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
