"""What the model attends to at chosen points: rows of A, A_fb and A', FSA's P, the cut.

Coordinates: points are (x, y) pixels of the original image. The image is resized to the
protocol size (h, w); each sliding window is a box (y1, y2, x1, x2) of that, padded
(left, right, top, bottom) to the host's multiple, and its host grid (rows, cols) tiles the
padded crop evenly. A point belongs to every window containing it; the one whose centre is
nearest is shown. Rows are over that window's N = rows·cols patches; for hosts with several
heads the A and A' rows shown are the mean over heads (FSA's A_fb is shared by all heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fbseg import fsa
from fbseg.classes import ClassList
from fbseg.errors import ConfigError
from fbseg.pipeline.config import Refinement, SegmentConfig
from fbseg.pipeline.crop import Capture, crop_logits
from fbseg.pipeline.postprocess import probabilities_and_labels
from fbseg.pipeline.window import boxes_for, centred_pad, slide

MAX_AUTO_POINTS = 6


@dataclass(frozen=True)
class WindowView:
    """One sliding window: its box at the protocol size, padding, grid, and the padded crop's
    place in original-image pixels (top, left, bottom, right; floats, may pass the border)."""

    box: tuple[int, int, int, int]
    pad: tuple[int, int, int, int]
    grid: tuple[int, int]
    region: tuple[float, float, float, float]


@dataclass(frozen=True)
class PointView:
    """One query point. Maps are (rows, cols) over its window's grid."""

    x: int
    y: int
    window: int
    patch: tuple[int, int]
    attn: np.ndarray  # host attention row A_i (mean over heads)
    feedback: np.ndarray  # FSA's feedback attention row A_fb,i
    final: np.ndarray  # the row of A' = (A_fb·A + A·A_fb + A_fb) / 3 (mean over heads)
    keep: np.ndarray  # bool: entries the nucleus cut kept in row i of S
    class_p: np.ndarray  # (K,) FSA's P at the patch, summed over each class's names


@dataclass
class Explanation:
    """Everything an explain sheet or page shows, as numpy arrays."""

    rgb: np.ndarray  # (H, W, 3) uint8
    classes: tuple[str, ...]
    protocol_size: tuple[int, int]  # (h, w)
    windows: list[WindowView]
    points: list[PointView]
    baseline_labels: np.ndarray  # (H, W): the host alone
    feedback_labels: np.ndarray  # (H, W): with FSA
    class_p: np.ndarray  # (K, H, W): FSA's P per class, stitched over windows
    refined_labels: np.ndarray | None = None  # (H, W): with FSA and the refinement (PAMR)
    _captures: list[Capture] = field(default_factory=list, repr=False)
    _name_to_class: list[int] = field(default_factory=list, repr=False)

    def rows(self, window: int, patches: Sequence[int]) -> dict[str, np.ndarray]:
        """Rows of A, A_fb, A' (R, N) and the cut (R, N) for patch indices of one window."""
        cap = self._captures[window]
        idx = torch.as_tensor(list(patches), dtype=torch.long)
        fb = cap.feedback[0].float()
        A = None if cap.attn is None else cap.attn[0:1].float()
        final = fsa.ensemble_rows(A, fb[None], idx)[0].mean(0)
        if A is None:
            attn = F.one_hot(idx, fb.shape[-1]).float().to(fb.device)
        else:
            attn = A[0][:, idx, :].mean(0)
        return {
            "attn": attn.cpu().numpy(),
            "feedback": fb[idx].cpu().numpy(),
            "final": final.cpu().numpy(),
            "keep": cap.keep[0][idx].cpu().numpy(),
        }

    def window_p(self, window: int) -> np.ndarray:
        """(N, K) FSA's P of one window, summed over each class's names."""
        return _per_class(self._captures[window].P[0].float(), self._name_to_class).cpu().numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        """Every panel's data, flat, for ``np.savez``."""
        out = {
            "image": self.rgb,
            "classes": np.array(self.classes),
            "baseline_labels": self.baseline_labels,
            "feedback_labels": self.feedback_labels,
            "class_p": self.class_p.astype(np.float32),
            "points_xy": np.array([(p.x, p.y) for p in self.points], dtype=np.int64).reshape(-1, 2),
        }
        for i, p in enumerate(self.points):
            for name in ("attn", "feedback", "final", "keep", "class_p"):
                out[f"point{i}_{name}"] = getattr(p, name)
            out[f"point{i}_window_box"] = np.array(self.windows[p.window].box)
            out[f"point{i}_patch"] = np.array(p.patch)
        return out


def _per_class(P: torch.Tensor, name_to_class: Sequence[int]) -> torch.Tensor:
    """(N, C names) → (N, K classes): the probability mass of each class's names."""
    K = max(name_to_class) + 1
    index = torch.as_tensor(list(name_to_class), dtype=torch.long)
    return torch.zeros(P.shape[0], K, dtype=P.dtype, device=P.device).index_add_(
        1, index.to(P.device), P
    )


def to_protocol(
    x: int, y: int, image_hw: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int]:
    """Original pixel (x, y) → the protocol-size pixel (row, col) whose area holds its centre."""
    (H, W), (h, w) = image_hw, size
    return min(int((y + 0.5) * h / H), h - 1), min(int((x + 0.5) * w / W), w - 1)


def pick_window(boxes: Sequence[tuple[int, int, int, int]], py: int, px: int) -> int:
    """Index of the window containing (py, px) whose centre is nearest (first on ties)."""
    best, best_d = -1, float("inf")
    for i, (y1, y2, x1, x2) in enumerate(boxes):
        if y1 <= py < y2 and x1 <= px < x2:
            d = ((y1 + y2) / 2 - py - 0.5) ** 2 + ((x1 + x2) / 2 - px - 0.5) ** 2
            if d < best_d:
                best, best_d = i, d
    if best < 0:
        raise ValueError(f"no window contains ({py}, {px})")
    return best


def patch_of(
    py: int,
    px: int,
    box: tuple[int, int, int, int],
    pad: tuple[int, int, int, int],
    grid: tuple[int, int],
) -> tuple[int, int]:
    """The grid cell (row, col) of a protocol pixel inside a window: the grid tiles the
    padded crop evenly, as the bilinear upsampling of the logits assumes."""
    y1, y2, x1, x2 = box
    left, right, top, bottom = pad
    hp, wp = y2 - y1 + top + bottom, x2 - x1 + left + right
    cy, cx = py - y1 + top, px - x1 + left
    return min(cy * grid[0] // hp, grid[0] - 1), min(cx * grid[1] // wp, grid[1] - 1)


def auto_points(
    probs: np.ndarray, labels: np.ndarray, limit: int = MAX_AUTO_POINTS
) -> list[tuple[int, int]]:
    """For the largest classes present: the pixel (x, y) where that class is most confident
    among the pixels labelled with it."""
    counts = np.bincount(labels.ravel(), minlength=probs.shape[0])
    points = []
    for k in np.argsort(-counts, kind="stable")[:limit]:
        if counts[k] == 0:
            break
        masked = np.where(labels == k, probs[k], -1.0)
        y, x = np.unravel_index(int(np.argmax(masked)), masked.shape)
        points.append((int(x), int(y)))
    return points


def check_points(points: Sequence[tuple[int, int]] | None, size: tuple[int, int]) -> None:
    """A ConfigError naming the first (x, y) point outside an image of ``size`` (H, W)."""
    H, W = size
    for x, y in points or []:
        if not (0 <= x < W and 0 <= y < H):
            raise ConfigError(f"point {x},{y} is outside the {W}×{H} image")


@torch.inference_mode()
def explain(
    segmenter,
    image,
    classes: ClassList,
    points: Sequence[tuple[int, int]] | None,
    cfg: SegmentConfig,
) -> Explanation:
    """Run FSA once over every window, keeping what each window computed, and read off the
    rows at ``points`` (default: ``auto_points``). ``cfg`` is resolved by the Segmenter
    (FSA is on whatever its ``feedback``: there is nothing to explain without it)."""
    window, stride = cfg.window, cfg.stride
    prepared = segmenter.prepare(image, cfg)
    rgb, guide = prepared.rgb, segmenter.model_input(prepared)
    img = guide.to(segmenter.dtype)
    H, W = rgb.shape[:2]
    check_points(points, (H, W))
    text = segmenter.encode_text(classes).to(segmenter.dtype)
    lam_value = segmenter.lam_for(cfg)
    C = text.shape[0]
    captures: list[Capture] = []

    def crop_fn(crops: torch.Tensor) -> torch.Tensor:
        cap = Capture()
        logits = crop_logits(
            segmenter.crop_model,
            crops,
            text,
            feedback=True,
            lam=lam_value,
            window=window,
            capture=cap,
        )
        captures.append(cap)
        P = cap.P.transpose(1, 2).reshape(crops.shape[0], C, *cap.grid).to(logits.dtype)
        return torch.cat([logits, cap.baseline, P], dim=1)

    pad_multiple = segmenter.pad_multiple
    stitched = slide(
        img, crop_fn, window=window, stride=stride, pad_multiple=pad_multiple, windows_per_forward=1
    ).float()
    plain = cfg.replace(refine=Refinement.NONE)  # the masks before refinement
    post_args = ((H, W), plain, classes.name_to_class, guide)
    fb_probs, feedback_labels = probabilities_and_labels(stitched[:C], *post_args)
    _, baseline_labels = probabilities_and_labels(stitched[C : 2 * C], *post_args)
    refined_labels = None
    if cfg.refine is not Refinement.NONE:
        fb_probs, refined = probabilities_and_labels(
            stitched[:C], (H, W), cfg, classes.name_to_class, guide
        )
        refined_labels = refined.cpu().numpy().astype(np.int64)
    P_map = F.interpolate(
        stitched[None, 2 * C :], size=(H, W), mode="bilinear", align_corners=False
    )[0]
    class_p = _per_class(P_map.flatten(1).T, classes.name_to_class).T.reshape(-1, H, W)
    feedback_labels = feedback_labels.cpu().numpy()
    baseline_labels = baseline_labels.cpu().numpy()

    h, w = img.shape[1:]
    boxes = boxes_for(h, w, window, stride)
    views = []
    for box, cap in zip(boxes, captures):
        pad = centred_pad(box[1] - box[0], box[3] - box[2], pad_multiple if window else 1)
        sy, sx = H / h, W / w
        region = (
            (box[0] - pad[2]) * sy,
            (box[2] - pad[0]) * sx,
            (box[1] + pad[3]) * sy,
            (box[3] + pad[1]) * sx,
        )
        views.append(WindowView(box, pad, cap.grid, region))
    exp = Explanation(
        rgb,
        classes.labels,
        (h, w),
        views,
        [],
        baseline_labels.astype(np.int64),
        feedback_labels.astype(np.int64),
        class_p.cpu().numpy().astype(np.float32),
        refined_labels,
        captures,
        list(classes.name_to_class),
    )
    final_labels = feedback_labels if refined_labels is None else refined_labels
    chosen = list(points) if points else auto_points(fb_probs.cpu().numpy(), final_labels)
    for x, y in chosen:
        py, px = to_protocol(x, y, (H, W), (h, w))
        wi = pick_window(boxes, py, px)
        view = views[wi]
        r, c = patch_of(py, px, view.box, view.pad, view.grid)
        i = r * view.grid[1] + c
        rows = exp.rows(wi, [i])
        grid = view.grid
        exp.points.append(
            PointView(
                x,
                y,
                wi,
                (r, c),
                rows["attn"][0].reshape(grid),
                rows["feedback"][0].reshape(grid),
                rows["final"][0].reshape(grid),
                rows["keep"][0].reshape(grid),
                exp.window_p(wi)[i],
            )
        )
    return exp
