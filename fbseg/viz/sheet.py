"""One PNG that shows an ``Explanation`` at a glance (PIL only, no plotting library).

Layout, top to bottom: the image with the query points; host-only mask, FSA mask and the
pixels where they disagree, with the legend; per point a row of A, A_fb and A' heat maps
(over the image, each with a colour bar), the nucleus cut and P at the point; then FSA's
class distribution P as one map per class.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from fbseg.viz import _font, blend, disagreement, legend_panel, palette

PANEL = 260  # longest side of an image panel
GAP = 10
TITLE = 22
POINT_COLOURS = [
    (255, 255, 0),
    (0, 255, 255),
    (255, 128, 0),
    (0, 255, 0),
    (255, 0, 128),
    (128, 128, 255),
]

# viridis at 9 stops; colour maps interpolate between them
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    np.float32,
)


def colormap(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Values → (…, 3) uint8 viridis colours, linear between vmin and vmax."""
    t = np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0, 1) * (len(_VIRIDIS) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (t - lo)[..., None]
    return (_VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac + 0.5).astype(np.uint8)


def _fit(h: int, w: int, side: int = PANEL) -> tuple[int, int]:
    s = side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _panel(arr: np.ndarray, size: tuple[int, int], nearest: bool = False) -> Image.Image:
    img = Image.fromarray(arr)
    return img.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR)


def heat_over_image(
    rgb: np.ndarray,
    grid_map: np.ndarray,
    region: tuple[float, float, float, float],
    size: tuple[int, int],
    vmax: float,
    alpha: float = 0.75,
) -> Image.Image:
    """A grid map (rows, cols) drawn over its window's place in the (dimmed) image."""
    H, W = rgb.shape[:2]
    h, w = size
    base = (rgb.astype(np.float32) * 0.35).astype(np.uint8)
    out = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    top, left, bottom, right = region
    sy, sx = h / H, w / W
    box = (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))
    heat = Image.fromarray(colormap(grid_map, 0.0, vmax)).resize(
        (max(1, box[2] - box[0]), max(1, box[3] - box[1])), Image.NEAREST
    )
    layer = out.copy()
    layer.paste(heat, box[:2])
    out = Image.blend(out, layer, alpha)
    ImageDraw.Draw(out).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 255, 255))
    return out


def colour_bar(height: int, vmax: float, width: int = 46) -> Image.Image:
    bar = Image.new("RGB", (width, height), (255, 255, 255))
    ramp = colormap(np.linspace(vmax, 0, height - 20)[:, None].repeat(10, 1), 0, vmax)
    bar.paste(Image.fromarray(ramp), (2, 10))
    d = ImageDraw.Draw(bar)
    font = _font(10)
    d.text((14, 4), f"{vmax:.2g}", fill=(0, 0, 0), font=font)
    d.text((14, height - 14), "0", fill=(0, 0, 0), font=font)
    return bar


def _mark(img: Image.Image, xy: tuple[float, float], colour, label: str) -> None:
    d = ImageDraw.Draw(img)
    x, y = xy
    d.ellipse([x - 6, y - 6, x + 6, y + 6], outline=(0, 0, 0), width=3)
    d.ellipse([x - 5, y - 5, x + 5, y + 5], outline=colour, width=2)
    d.text((x + 8, y - 8), label, fill=colour, font=_font(13))


def _bars(
    values: np.ndarray, labels, colours: np.ndarray, height: int, width: int = 200
) -> Image.Image:
    """Horizontal bars of a distribution over classes (top 8)."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = _font(11)
    order = np.argsort(-values)[:8]
    row = max(14, min(22, height // max(len(order), 1)))
    for j, k in enumerate(order):
        y = 2 + j * row
        d.rectangle(
            [4, y, 4 + int(90 * float(values[k])), y + row - 4],
            fill=tuple(int(c) for c in colours[k]),
        )
        d.text((100, y), f"{labels[k][:12]} {values[k]:.2f}", fill=(0, 0, 0), font=font)
    return img


class _Canvas:
    """Rows of titled panels, stacked."""

    def __init__(self) -> None:
        self.rows: list[list[tuple[str, Image.Image]]] = []

    def add(self, row: list[tuple[str, Image.Image]]) -> None:
        self.rows.append(row)

    def render(self, title: str) -> Image.Image:
        widths = [sum(im.width for _, im in row) + GAP * (len(row) + 1) for row in self.rows]
        heights = [max(im.height for _, im in row) + TITLE + GAP for row in self.rows]
        W, H = max(widths + [400]), sum(heights) + 34
        sheet = Image.new("RGB", (W, H), (255, 255, 255))
        d = ImageDraw.Draw(sheet)
        d.text((GAP, 8), title, fill=(0, 0, 0), font=_font(16))
        y = 34
        for row, rh in zip(self.rows, heights):
            x = GAP
            for name, im in row:
                d.text((x, y + 2), name, fill=(0, 0, 0), font=_font(13))
                sheet.paste(im, (x, y + TITLE))
                x += im.width + GAP
            y += rh
        return sheet


def explain_sheet(exp, title: str = "") -> Image.Image:
    """The whole sheet for an ``fbseg.pipeline.explain.Explanation``."""
    H, W = exp.rgb.shape[:2]
    size = _fit(H, W)
    sy, sx = size[0] / H, size[1] / W
    colours = palette(len(exp.classes))
    canvas = _Canvas()

    marked = _panel(exp.rgb, size)
    for j, p in enumerate(exp.points):
        _mark(
            marked,
            ((p.x + 0.5) * sx, (p.y + 0.5) * sy),
            POINT_COLOURS[j % len(POINT_COLOURS)],
            str(j + 1),
        )
    base = _panel(blend(exp.rgb, exp.baseline_labels, colours, 0.6), size)
    fb = _panel(blend(exp.rgb, exp.feedback_labels, colours, 0.6), size)
    diff = _panel(
        disagreement(exp.rgb, exp.baseline_labels, exp.feedback_labels), size, nearest=True
    )
    changed = float((exp.baseline_labels != exp.feedback_labels).mean())
    fractions = (
        np.bincount(exp.feedback_labels.ravel(), minlength=len(exp.classes))
        / exp.feedback_labels.size
    )
    top_row = [
        ("image + query points", marked),
        ("host only", base),
        ("with FSA", fb),
        (f"changed pixels ({100 * changed:.1f}%)", diff),
    ]
    if exp.refined_labels is not None:
        refined = _panel(blend(exp.rgb, exp.refined_labels, colours, 0.6), size)
        top_row.append(("with FSA + PAMR", refined))
        fractions = (
            np.bincount(exp.refined_labels.ravel(), minlength=len(exp.classes))
            / exp.refined_labels.size
        )
    area = "FSA" if exp.refined_labels is None else "FSA + PAMR"
    top_row.append(
        (f"classes ({area} area)", legend_panel(list(exp.classes), colours, fractions, size[0]))
    )
    canvas.add(top_row)

    for j, p in enumerate(exp.points):
        region = exp.windows[p.window].region
        panels = []
        for name, grid_map in (
            ("A (host)", p.attn),
            ("A_fb (feedback)", p.feedback),
            ("A' (final)", p.final),
        ):
            vmax = float(max(grid_map.max(), 1e-12))  # each map on its own scale, with its bar
            heat = heat_over_image(exp.rgb, grid_map, region, size, vmax)
            _mark(
                heat,
                ((p.x + 0.5) * sx, (p.y + 0.5) * sy),
                POINT_COLOURS[j % len(POINT_COLOURS)],
                "",
            )
            panels.append((f"{j + 1}: {name} row", heat))
            panels.append(("", colour_bar(size[0], vmax)))
        keep_img = heat_over_image(exp.rgb, p.keep.astype(np.float32), region, size, 1.0)
        panels.append((f"cut: kept {int(p.keep.sum())}/{p.keep.size}", keep_img))
        panels.append((f"P at ({p.x},{p.y})", _bars(p.class_p, exp.classes, colours, size[0])))
        canvas.add(panels)

    small = _fit(H, W, PANEL * 2 // 3)
    maps = [
        (f"P: {label[:18]}", _panel(colormap(exp.class_p[k], 0.0, 1.0), small))
        for k, label in enumerate(exp.classes)
    ]
    for start in range(0, len(maps), 6):
        canvas.add(maps[start : start + 6])
    return canvas.render(title or "fbseg explain")
