"""The .npz files fbseg writes: what np.load and zipfile read back, checked also by a naive
reader of the zip layout written here (end record, central directory, local headers, raw
deflate, CRC-32)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest

from fbseg import npz
from fbseg.npz import npz_bytes


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "probs": rng.random((3, 5, 7)).astype(np.float16),
        "classes": np.array(["cat", "sofa; couch", "Ÿ"]),
        "grid": np.arange(6).reshape(2, 3),
        "flag": np.array(True),
        "none": np.zeros((0, 4), dtype=np.float32),
        "smooth": np.repeat(np.linspace(0, 1, 300, dtype=np.float32), 400).reshape(300, 400),
    }


def _naive_members(data: bytes) -> dict[str, bytes]:
    """Each member's uncompressed bytes, read from the plain (not ZIP64) layout by hand: the
    end record at the very end, the central directory it points to, and for each entry its
    local header, whose fields must agree with the directory's; the data inflated as raw
    deflate and checked against the CRC-32 both headers hold."""
    end = data[-22:]
    sig, _, _, count, total, dir_size, dir_offset, comment = struct.unpack("<IHHHHIIH", end)
    assert (sig, comment, count) == (0x06054B50, 0, total)
    assert dir_offset + dir_size == len(data) - 22
    members, at = {}, dir_offset
    for _ in range(count):
        fields = struct.unpack("<IHHHHHHIIIHHHHHII", data[at : at + 46])
        sig, _, needs, flags, method, time_, date, crc, packed, size = fields[:10]
        name_len, extra_len, comment_len, _, _, _, offset = fields[10:]
        assert sig == 0x02014B50 and method == 8 and (time_, date) == (0, 0x21)
        assert flags & ~(1 << 11) == 0  # no data descriptor, no encryption
        name = data[at + 46 : at + 46 + name_len]
        at += 46 + name_len + extra_len + comment_len
        local = struct.unpack("<IHHHHHIIIHH", data[offset : offset + 30])
        assert local[0] == 0x04034B50
        assert local[1:] == (needs, flags, 8, 0, 0x21, crc, packed, size, name_len, 0)
        assert data[offset + 30 : offset + 30 + name_len] == name
        start = offset + 30 + name_len
        raw = zlib.decompress(data[start : start + packed], -15)
        assert len(raw) == size and zlib.crc32(raw) == crc
        members[name.decode("utf-8" if flags & (1 << 11) else "ascii")] = raw
    assert at == dir_offset + dir_size
    return members


def test_npz_bytes_load_back_like_numpy_s_own_and_do_not_depend_on_the_clock(monkeypatch):
    import time

    arrays = _arrays()
    first = npz_bytes(arrays)
    loaded = np.load(io.BytesIO(first))
    assert loaded.files == list(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array)
    # the same members, byte for byte, as numpy's own writer puts in its archive
    theirs = io.BytesIO()
    np.savez_compressed(theirs, **arrays)
    with zipfile.ZipFile(theirs) as archive:
        expected = {n: archive.read(n) for n in archive.namelist()}
    assert _naive_members(first) == expected
    later = time.time() + 3 * 86400  # another day: any time stamp would differ
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "localtime", lambda t=None: time.gmtime(later))
    assert npz_bytes(arrays) == first


def test_zipfile_reads_every_member_deflated_at_the_zip_epoch_with_its_crc():
    data = npz_bytes(_arrays())
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # every member inflates to its CRC-32
        infos = archive.infolist()
    assert [i.filename for i in infos] == [f"{k}.npy" for k in _arrays()]
    assert {(i.compress_type, i.date_time) for i in infos} == {(8, (1980, 1, 1, 0, 0, 0))}
    smooth = next(i for i in infos if i.filename == "smooth.npy")
    assert smooth.compress_size < smooth.file_size / 4  # it is compressed, not stored


def test_a_name_outside_ascii_is_stored_as_utf8():
    data = npz_bytes({"Ÿ-map": np.arange(3)})
    assert list(_naive_members(data)) == ["Ÿ-map.npy"]
    assert np.array_equal(np.load(io.BytesIO(data))["Ÿ-map"], np.arange(3))


@pytest.mark.parametrize("threshold, max_entries", [(64, 0xFFFF), (0xFFFFFFFF, 2), (1, 1)])
def test_large_archives_keep_sizes_offsets_and_counts_in_zip64_records(
    monkeypatch, threshold, max_entries
):
    """Past 4 GiB (or 65,535 entries) a zip holds its sizes, offsets and counts in ZIP64
    records; the limits are lowered here so small arrays take those paths."""
    monkeypatch.setattr(npz, "ZIP64_FROM", threshold)
    monkeypatch.setattr(npz, "_MAX_ENTRIES", max_entries)
    arrays = _arrays()
    data = npz_bytes(arrays)
    # the plain end record marks what it cannot hold; the locator before it points to the
    # ZIP64 end record, which holds the count, the directory's size and its offset
    _, _, _, count, total, size, offset, _ = struct.unpack("<IHHHHIIH", data[-22:])
    assert total == count
    located_sig, _, located, disks = struct.unpack("<IIQI", data[-42:-22])
    assert (located_sig, disks) == (0x07064B50, 1)
    record = struct.unpack("<IQHHIIQQQQ", data[located : located + 56])
    assert record[:4] == (0x06064B50, 44, 45, 45) and located + 56 == len(data) - 42
    true_count, _, true_size, true_offset = record[6:]
    assert true_count == len(arrays) and true_offset + true_size == located
    assert count == (0xFFFF if true_count >= max_entries else true_count)
    assert size == (0xFFFFFFFF if true_size >= threshold else true_size)
    assert offset == (0xFFFFFFFF if true_offset >= threshold else true_offset)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
    assert [i.filename for i in infos] == [f"{k}.npy" for k in arrays]
    for info in infos:  # a local header with a size marked large holds both in its extra
        at = info.header_offset
        fields = struct.unpack("<IHHHHHIIIHH", data[at : at + 30])
        packed, size, name_len, extra_len = fields[7:]
        extra = data[at + 30 + name_len : at + 30 + name_len + extra_len]
        if 0xFFFFFFFF in (packed, size):
            assert fields[1] == 45
            assert struct.unpack("<HHQQ", extra) == (1, 16, info.file_size, info.compress_size)
        else:
            assert (packed, size, extra) == (info.compress_size, info.file_size, b"")
    loaded = np.load(io.BytesIO(data))
    for name, array in arrays.items():
        assert np.array_equal(loaded[name], array)
