"""The class grammar, image reading and the small writers."""

import numpy as np
import pytest
from PIL import Image

from fbseg import ConfigError, InputError, parse_classes, read_class_file
from fbseg.classes import with_background
from fbseg.errors import OutputError
from fbseg.io import atomic_write_bytes, check_writable_folder, read_image
from fbseg.viz import blend, indexed_png, palette

from conftest import random_image


def test_grammar_string_and_list_agree():
    a = parse_classes("cat, sofa; couch ,floor")
    b = parse_classes(["cat", "sofa;couch", " floor"])
    assert a == b
    assert a.labels == ("cat", "sofa;couch", "floor")
    assert a.flat_names == ["cat", "sofa", "couch", "floor"]
    assert a.name_to_class == [0, 1, 1, 2]


@pytest.mark.parametrize(
    "bad", ["", " , ", "cat,,dog", "cat;;kitten", "cat,dog,Cat", "a;b,b;a", "cat;Cat"]
)
def test_bad_class_lists_are_errors(bad):
    with pytest.raises(ConfigError):
        parse_classes(bad)


def test_class_file_keeps_commas_and_reference_separators(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("sky; wall; tree\nperson, adult; child\n\ncat\n")
    cl = read_class_file(f)
    assert cl.names == (("sky", "wall", "tree"), ("person, adult", "child"), ("cat",))


def test_background_is_prepended_as_label_zero():
    cl = with_background(parse_classes("cat,dog"), "sky; wall")
    assert cl.labels[0] == "background" and cl.names[0] == ("sky", "wall")
    assert cl.name_to_class == [0, 0, 1, 2]


def test_image_modes_are_converted(tmp_path):
    rgb = random_image(20, 30)
    for mode in ("L", "RGBA", "CMYK", "P"):
        Image.fromarray(rgb).convert(mode).save(
            tmp_path / f"x_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        )
        out = read_image(next(tmp_path.glob(f"x_{mode}.*")))
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    deep = (np.arange(600).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.shape == (20, 30, 3) and out[..., 0].max() > 200


def test_too_large_images_are_refused(tmp_path, monkeypatch):
    import fbseg.io

    Image.fromarray(random_image(40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(fbseg.io, "MAX_PIXELS", 1000)
    with pytest.raises(InputError, match="too large"):
        read_image(tmp_path / "big.png")


def test_indexed_png_round_trip_and_overlay_formula(tmp_path):
    labels = np.random.default_rng(0).integers(0, 5, (13, 17))
    colours = palette(5)
    (tmp_path / "m.png").write_bytes(indexed_png(labels, colours))
    back = Image.open(tmp_path / "m.png")
    assert back.mode == "P"
    np.testing.assert_array_equal(np.asarray(back), labels)
    np.testing.assert_array_equal(np.asarray(back.getpalette()[:15]).reshape(5, 3), colours)
    img = random_image(13, 17)
    expected = np.clip(0.7 * img + 0.3 * colours[labels].astype(np.float64) + 0.5, 0, 255).astype(
        np.uint8
    )
    assert np.abs(blend(img, labels, colours, 0.3).astype(int) - expected.astype(int)).max() <= 1


def test_atomic_write_never_overwrites_without_asking(tmp_path):
    from fbseg import OutputError

    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"one")
    with pytest.raises(OutputError, match="exists"):
        atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"one"
    atomic_write_bytes(p, b"two", overwrite=True)
    assert p.read_bytes() == b"two" and [x.name for x in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from fbseg.io import atomic_write_bytes

    atomic_write_bytes(tmp_path / "a.bin", b"x")
    mode = stat.S_IMODE((tmp_path / "a.bin").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_atomic_write_without_hard_links_still_refuses_to_overwrite(tmp_path, monkeypatch):
    import errno

    import fbseg.io
    from fbseg.errors import OutputError
    from fbseg.io import atomic_write_bytes

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")  # what vfat answers

    monkeypatch.setattr(fbseg.io.os, "link", no_links)
    atomic_write_bytes(tmp_path / "a.txt", b"first")
    assert (tmp_path / "a.txt").read_bytes() == b"first"
    with pytest.raises(OutputError, match="exists"):
        atomic_write_bytes(tmp_path / "a.txt", b"second")
    assert (tmp_path / "a.txt").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_stale_temporaries_of_the_given_names_go_each_folder_listed_once(tmp_path, monkeypatch):
    import os

    import fbseg.io
    from fbseg.io import remove_stale_temporaries

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    stale = [a / ".x.png.k3j_9q2z.tmp", a / ".x.png.abc123.tmp", b / ".y.json.0aZ9xyzz.tmp"]
    kept = [
        a / ".other.png.k3j_9q2z.tmp",  # a temporary of a name not asked about
        a / ".hidden.tmp",  # a user's file
        a / "x.png",  # the output itself
        a / ".x.png",
        b / ".y.json.tmp.bak",
    ]
    for path in stale + kept:
        path.write_bytes(b"?")
    listed = []
    real_scandir = os.scandir

    def counting_scandir(folder="."):
        if not isinstance(folder, int):  # pytest's own clean-up lists by descriptor
            listed.append(os.fspath(folder))
        return real_scandir(folder)

    monkeypatch.setattr(fbseg.io.os, "scandir", counting_scandir)
    paths = [a / "x.png", a / "z.png", b / "y.json", tmp_path / "missing" / "q.png"]
    assert remove_stale_temporaries(paths * 50) == 3
    assert sorted(listed) == sorted(map(os.fspath, [a, b, tmp_path / "missing"]))
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_writable_folder_check_leaves_no_trace(tmp_path):
    """A folder that can be written into passes, and the check leaves nothing: no probe
    file in an existing folder, no folders made for a missing one."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    check_writable_folder(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]
    check_writable_folder(tmp_path / "a" / "b" / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_writable_folder_check_refuses_files_and_paths_through_them(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not a folder")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        check_writable_folder(photo)
    with pytest.raises(OutputError, match=r"cannot write into .*photo.jpg/out \(Not a directory\)"):
        check_writable_folder(photo / "out")
    assert photo.read_bytes() == b"not a folder"
    assert [p.name for p in tmp_path.iterdir()] == ["photo.jpg"]
