"""`fbseg explain` and `--compare`: the rows drawn are the true rows; points map right."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fbseg.classes import parse_classes
from fbseg.pipeline.explain import patch_of, pick_window, to_protocol
from fbseg.pipeline.segmenter import Segmenter
from fbseg.pipeline.window import protocol_size
from fbseg_cli import app

import naive
from conftest import ASSETS, TINY, random_image
from helpers import FAST, normalised, with_text

KW = dict(short_side=64, window=56, stride=32)  # crops of 56 padded to 64: 4×4 grids


@pytest.fixture(scope="module")
def explained(tiny_clip):
    seg = Segmenter(tiny_clip, model_name=TINY, host="naclip", device="cpu", precision="fp32")
    classes = ["cat", "sofa; couch", "floor"]
    with_text(seg, classes, 32)
    rgb = random_image(70, 130, seed=4)  # protocol 64×119: windows at x = 0, 32, 63
    H, W = rgb.shape[:2]
    points = [(0, 0), (W - 1, H - 1), (W - 1, 0), (0, H - 1), (64, 35)]
    return seg, rgb, parse_classes(classes), seg.explain(rgb, classes, points, **KW)


def test_explain_keeps_no_autograd_graph(explained, monkeypatch):
    """explain runs its forwards in inference mode, as segment does: no graph is kept for
    a backward pass that never comes (memory, and time)."""
    seg, rgb, classes, _ = explained
    seen = []
    plain = seg.encode_text

    def spy(*a, **k):
        seen.append(torch.is_inference_mode_enabled())
        return plain(*a, **k)

    monkeypatch.setattr(seg, "encode_text", spy)
    seg.explain(rgb, classes, [(0, 0)], **KW)
    assert seen == [True]


def test_points_map_to_windows_and_patches_at_corners(explained):
    _, rgb, _, exp = explained
    assert exp.protocol_size == protocol_size(70, 130, 64) == (64, 119)
    boxes = [w.box for w in exp.windows]
    assert boxes == [
        (0, 56, 0, 56),
        (0, 56, 32, 88),
        (0, 56, 63, 119),
        (8, 64, 0, 56),
        (8, 64, 32, 88),
        (8, 64, 63, 119),
    ]  # row by row
    got = [(p.window, p.patch) for p in exp.points]
    # top-left: first window, first patch; bottom-right: last window, last patch (the crop is
    # padded 4 px each side, so pixel 63 of 64 falls in grid cell 3)
    assert got[0] == (0, (0, 0)) and got[1] == (5, (3, 3))
    assert got[2] == (2, (0, 3)) and got[3] == (3, (3, 0))
    # (64, 35) → protocol (⌊35.5·64/70⌋, ⌊64.5·119/130⌋) = (32, 59), inside windows 1 and 4;
    # window 4's centre (36, 60) is nearer than window 1's (28, 60). In it:
    # cy = 32 − 8 + 4 = 28, cx = 59 − 32 + 4 = 31, cells of 16 px → (1, 1)
    assert to_protocol(64, 35, (70, 130), (64, 119)) == (32, 59)
    assert got[4] == (4, (1, 1))
    assert pick_window(boxes, 32, 59) == 4
    assert patch_of(32, 59, boxes[4], (4, 4, 4, 4), (4, 4)) == (1, 1)


def test_rows_equal_the_naive_computation_and_sum_as_defined(explained, tiny_clip):
    seg, rgb, cl, exp = explained
    text = seg.encode_text(cl)
    img = normalised(rgb, exp.protocol_size)
    for p in exp.points:
        y1, y2, x1, x2 = exp.windows[p.window].box
        crop = torch.nn.functional.pad(img[:, y1:y2, x1:x2], (4, 4, 4, 4))
        with torch.no_grad():
            st = naive.crop_state("naclip", tiny_clip.visual, crop, text, seg.lam)
        i = p.patch[0] * 4 + p.patch[1]
        heads = st["attn_heads"]
        A_row = torch.stack([a[i] for a in heads]).mean(0)
        fb_row = st["A_fb"][i]
        final_row = torch.stack([naive.ensemble(a, st["A_fb"])[i] for a in heads]).mean(0)
        np.testing.assert_allclose(p.attn.ravel(), A_row.numpy(), atol=1e-5)
        np.testing.assert_allclose(p.feedback.ravel(), fb_row.numpy(), atol=1e-5)
        np.testing.assert_allclose(p.final.ravel(), final_row.numpy(), atol=1e-5)
        # A: softmax over CLS + patches, so a patch row sums to 1 − its CLS weight
        cls_weight = torch.stack([f[i + 1, 0] for f in st["full"]]).mean()
        assert p.attn.sum() == pytest.approx(1 - float(cls_weight), abs=1e-5)
        assert p.feedback.sum() == pytest.approx(1.0, abs=1e-5)  # A_fb rows are a softmax
        # A' = (A_fb·A + A·A_fb + A_fb)/3 → row sum (A_fb·s + s_i + 1)/3, s = A's row sums
        sums = torch.stack([a.sum(1) for a in heads])  # (h, N)
        expect = ((st["A_fb"][i] @ sums.T) + sums[:, i] + 1).mean() / 3
        assert p.final.sum() == pytest.approx(float(expect), abs=1e-5)
        assert p.keep.dtype == bool and p.keep.any()
        assert p.class_p.sum() == pytest.approx(1.0, abs=1e-5)


def test_explain_masks_equal_segment_with_and_without_fsa(explained):
    seg, rgb, cl, exp = explained
    fb = seg.segment(rgb, cl, feedback=True, **KW)
    base = seg.segment(rgb, cl, feedback=False, **KW)
    assert np.array_equal(exp.feedback_labels, fb.labels)
    assert np.array_equal(exp.baseline_labels, base.labels)
    both = seg.segment(rgb, cl, compare=True, **KW)
    assert np.array_equal(both.labels, fb.labels) and np.array_equal(
        both.baseline_labels, base.labels
    )
    cmp = both.to_json()["compare"]
    assert cmp["changed_pixel_fraction"] == pytest.approx(float((base.labels != fb.labels).mean()))
    assert sum(c["change"] for c in cmp["classes"]) == pytest.approx(0.0, abs=1e-9)


def test_explain_cli_writes_sheet_page_and_raw(tmp_path, tiny_ckpt):
    args = [
        "explain",
        str(ASSETS / "cat.jpg"),
        "-c",
        "cat,rug,wall",
        *FAST,
        "--checkpoint",
        str(tiny_ckpt),
        "-o",
        str(tmp_path),
        "--html",
        "--save-raw",
        "--at",
        "10,20",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    sheet = Image.open(tmp_path / "cat.explain.png")
    assert sheet.size[0] > 1000 and sheet.size[1] > 500  # 3 panel rows for 1 point
    raw = np.load(tmp_path / "cat.explain.npz")
    assert raw["points_xy"].tolist() == [[10, 20]] and raw["feedback_labels"].shape == (300, 451)
    assert (tmp_path / "cat.explain.html").stat().st_size < 10_000_000
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 4 and "exists (use --overwrite)" in r.stderr
    r = CliRunner().invoke(app, args[:-1] + ["9999,1", "--overwrite"])
    assert r.exit_code == 2 and "outside the 451×300 image" in r.stderr
    r = CliRunner().invoke(app, args[:-1] + ["ten,1", "--overwrite"])
    assert r.exit_code == 2 and "--at takes X,Y" in r.stderr


def test_explain_point_outside_the_image_fails_before_any_weights_load(tmp_path, monkeypatch):
    import fbseg.pipeline.segmenter

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(fbseg.pipeline.segmenter, "load_clip", no_loading)
    args = ["explain", str(ASSETS / "cat.jpg"), "-c", "cat,rug", "-o", str(tmp_path)]
    r = CliRunner().invoke(app, [*args, "--at", "10,20", "--at", "451,0"])
    assert r.exit_code == 2 and "point 451,0 is outside the 451×300 image" in r.stderr
    assert "Traceback" not in r.output and list(tmp_path.iterdir()) == []


def test_segment_compare_writes_baseline_and_diff(tmp_path, tiny_ckpt):
    r = CliRunner().invoke(
        app,
        [
            "segment",
            str(ASSETS / "cat.jpg"),
            "-c",
            "cat,rug,wall",
            "--compare",
            "-o",
            str(tmp_path),
            *FAST,
            "--checkpoint",
            str(tiny_ckpt),
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "cat.json").read_text())
    fb = np.asarray(Image.open(tmp_path / "cat.mask.png"))
    base = np.asarray(Image.open(tmp_path / "cat.baseline.png"))
    diff = np.asarray(Image.open(tmp_path / "cat.diff.png"))
    assert data["compare"]["changed_pixel_fraction"] == pytest.approx(float((fb != base).mean()))
    magenta = np.all(diff == [255, 0, 255], axis=-1)
    assert np.array_equal(magenta, fb != base)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# on the tests themselves: a mark on a helper they call does nothing
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or shutil.which("chromedriver") is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)


def _headless_chromium(tmp_path):
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(
        options=opts, service=webdriver.ChromeService(shutil.which("chromedriver"))
    )


@needs_chromium
def test_html_page_in_a_real_headless_browser(explained, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fbseg.viz.page import explain_html

    _, rgb, _, exp = explained
    page = tmp_path / "page.html"
    page.write_text(explain_html(exp, "test page"))
    driver = _headless_chromium(tmp_path)
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 20).until(
            lambda d: d.execute_script("return document.body.dataset.ready")
        )
        main = driver.find_element(By.ID, "main")
        info = driver.find_element(By.ID, "info")
        heat = lambda: driver.execute_script(
            "return document.getElementById('feedback').toDataURL()"
        )  # noqa: E731
        w, h = main.size["width"], main.size["height"]
        # click near the top-left corner, then near the bottom-right corner
        ActionChains(driver).move_to_element_with_offset(
            main, -w // 2 + 2, -h // 2 + 2
        ).click().perform()
        first_row, first_heat = info.get_attribute("data-row"), heat()
        assert first_row == "0:0", info.text
        ActionChains(driver).move_to_element_with_offset(
            main, w // 2 - 3, h // 2 - 3
        ).click().perform()
        second_row, second_heat = info.get_attribute("data-row"), heat()
        assert second_row.startswith("5:") and second_row != first_row
        assert second_heat != first_heat  # a click changes the displayed row
        # the mask toggle and the class switch redraw the image
        before = driver.execute_script("return document.getElementById('main').toDataURL()")
        driver.find_element(By.CSS_SELECTOR, "input[value=feedback]").click()
        assert driver.execute_script("return document.getElementById('main').toDataURL()") != before
    finally:
        driver.quit()


@needs_chromium
def test_html_page_offers_the_refined_mask(explained, tmp_path):
    """With PAMR the page offers a third mask, which draws differently from the FSA one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fbseg.viz.page import explain_html

    seg, rgb, classes, _ = explained
    exp = seg.explain(rgb, classes, None, refine="pamr", pamr_dilations=(1, 2), **KW)
    assert (exp.refined_labels != exp.feedback_labels).any()
    page = tmp_path / "page.html"
    page.write_text(explain_html(exp, "refined"))
    driver = _headless_chromium(tmp_path)
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 20).until(
            lambda d: d.execute_script("return document.body.dataset.ready")
        )
        assert driver.find_element(By.ID, "refined-choice").is_displayed()
        canvas = "return document.getElementById('main').toDataURL()"
        driver.find_element(By.CSS_SELECTOR, "input[value=feedback]").click()
        fsa_only = driver.execute_script(canvas)
        driver.find_element(By.CSS_SELECTOR, "input[value=refined]").click()
        assert driver.execute_script(canvas) != fsa_only
    finally:
        driver.quit()
