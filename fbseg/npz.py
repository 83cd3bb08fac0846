"""The ``.npz`` files fbseg writes (``--save-probs``, ``explain --raw``): numpy's format, a zip
of ``.npy`` files (what ``np.load`` reads), each deflated by libdeflate at its fastest level.

A K×H×W float16 probability map barely compresses (by about an eighth), and compressing it
was most of what a writer spent on such an image: a ``--save-probs`` write of 21 classes at
300–600 px took 146–158 ms with zlib level 1, 66–73 ms with libdeflate, for files 1% larger
(benchmarks/bench_outputs.py). Python's zipfile compresses with zlib only, so the archive is
laid out here (PKWARE's APPNOTE: local headers, the central directory, its end record, and
ZIP64 records where a size or an offset reaches 4 GiB). Every entry carries one fixed time,
so the bytes depend on the arrays alone (a resumed run compares the files a killed run
finished byte for byte).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import deflate as libdeflate
import numpy as np

NPZ_LEVEL = 1  # libdeflate's fastest: such arrays barely gain from more search
ZIP64_FROM = 0xFFFFFFFF  # a size or offset from here on is kept in a ZIP64 record
_MAX_ENTRIES = 0xFFFF  # an end record counts entries in 16 bits
_DEFLATED = 8
_NEEDS, _NEEDS_ZIP64 = 20, 45  # version needed to extract: deflate; ZIP64
_DOS_TIME, _DOS_DATE = 0, (1 << 5) | 1  # 00:00, 1980-01-01: the zip epoch
_UTF8_NAME = 1 << 11


@dataclass(frozen=True)
class _Entry:
    """One member: its name (bytes), flags, CRC-32, compressed and original sizes, and where
    its local header starts."""

    name: bytes
    flags: int
    crc: int
    packed: int
    size: int
    offset: int


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of ``np.savez_compressed(file, **arrays)``, deflated by libdeflate (level
    ``NPZ_LEVEL``), every entry stamped with the zip epoch."""
    parts: list[bytes] = []
    entries: list[_Entry] = []
    offset = 0
    for key, array in arrays.items():
        raw = io.BytesIO()
        np.lib.format.write_array(raw, np.asanyarray(array), allow_pickle=False)
        data = raw.getbuffer()
        packed = libdeflate.deflate_compress(data, NPZ_LEVEL)
        entry = _Entry(*_name(f"{key}.npy"), libdeflate.crc32(data), len(packed), len(data), offset)
        del data
        header = _local_header(entry)
        parts += [header, packed]
        offset += len(header) + len(packed)
        entries.append(entry)
    directory = b"".join(_central_header(e) for e in entries)
    return b"".join([*parts, directory, _end_records(len(entries), len(directory), offset)])


def _name(name: str) -> tuple[bytes, int]:
    """The name's bytes and flags: ASCII as is, anything else UTF-8 with its flag set."""
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf-8"), _UTF8_NAME


def _local_header(e: _Entry) -> bytes:
    """The header before an entry's data; both sizes go to a ZIP64 field if either is large."""
    wide = e.size >= ZIP64_FROM or e.packed >= ZIP64_FROM
    extra = struct.pack("<HHQQ", 1, 16, e.size, e.packed) if wide else b""
    sizes = (0xFFFFFFFF, 0xFFFFFFFF) if wide else (e.packed, e.size)
    fixed = struct.pack(
        "<IHHHHHIIIHH",
        0x04034B50,
        _NEEDS_ZIP64 if wide else _NEEDS,
        e.flags,
        _DEFLATED,
        _DOS_TIME,
        _DOS_DATE,
        e.crc,
        *sizes,
        len(e.name),
        len(extra),
    )
    return fixed + e.name + extra


def _central_header(e: _Entry) -> bytes:
    """The entry's record in the central directory; each large value (original size,
    compressed size, offset, in that order) goes to a ZIP64 field."""
    values, wide = [], []
    for value in (e.size, e.packed, e.offset):
        large = value >= ZIP64_FROM
        values.append(0xFFFFFFFF if large else value)
        if large:
            wide.append(value)
    extra = struct.pack(f"<HH{len(wide)}Q", 1, 8 * len(wide), *wide) if wide else b""
    size, packed, offset = values
    needs = _NEEDS_ZIP64 if wide else _NEEDS
    fixed = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        needs,  # made by: MS-DOS attributes, this version
        needs,
        e.flags,
        _DEFLATED,
        _DOS_TIME,
        _DOS_DATE,
        e.crc,
        packed,
        size,
        len(e.name),
        len(extra),
        0,  # comment
        0,  # disk
        0,  # internal attributes
        0,  # external attributes
        offset,
    )
    return fixed + e.name + extra


def _end_records(count: int, directory_size: int, directory_offset: int) -> bytes:
    """The end of central directory record, after a ZIP64 end record and its locator when
    the count, the directory's size or its offset does not fit the plain record (each such
    field of it then holds its all-ones marker)."""
    many = 0xFFFF if count >= _MAX_ENTRIES else count
    size = 0xFFFFFFFF if directory_size >= ZIP64_FROM else directory_size
    offset = 0xFFFFFFFF if directory_offset >= ZIP64_FROM else directory_offset
    plain = struct.pack(
        "<IHHHHIIH",
        0x06054B50,
        0,  # this disk
        0,  # the directory's disk
        many,
        many,
        size,
        offset,
        0,  # comment
    )
    if (many, size, offset) == (count, directory_size, directory_offset):
        return plain
    record = struct.pack(
        "<IQHHIIQQQQ",
        0x06064B50,
        44,  # the record's size after this field
        _NEEDS_ZIP64,
        _NEEDS_ZIP64,
        0,
        0,
        count,
        count,
        directory_size,
        directory_offset,
    )
    record_offset = directory_offset + directory_size
    locator = struct.pack("<IIQI", 0x07064B50, 0, record_offset, 1)
    return record + locator + plain
