"""The public entry point: load once, segment many images with any class list."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fbseg import __version__
from fbseg.models.clip import DEFAULT_BACKBONE, default_lam, default_pretrained, load_clip, network_of
from fbseg.classes import ClassList, parse_classes
from fbseg.models.clip_tower import patch_size
from fbseg.errors import ConfigError
from fbseg.pipeline.crop import CropModel, crop_logits
from fbseg.hosts import DEFAULT_HOST, get_host
from fbseg.pipeline.window import (class_probabilities, labels_from_probs, protocol_size, resize_image,
                        slide_many)
from fbseg.io import ImageLike, read_image
from fbseg.models.proxies import DEFAULT_PROXY, PROXIES, ProxySpec, load_proxy
from fbseg.result import SegmentationResult
from fbseg.models.text import TextCache
from fbseg.models.weights import cache_dir

# Bumped whenever a change alters the numbers a given model, weights and settings produce, so
# no cache (text embeddings, eval counts) written before it is read after it.
PROTOCOL_VERSION = 2

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device mps requested but MPS is not available")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    return PRECISIONS[precision]


def _as_classes(classes: ClassList | str | Sequence[str]) -> ClassList:
    return classes if isinstance(classes, ClassList) else parse_classes(classes)


def _weights_id(model: str, pretrained: str | None, checkpoint: str | Path | None) -> str:
    if checkpoint is not None:
        st = Path(checkpoint).stat()
        return f"{model}|file:{Path(checkpoint).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return f"{model}|{pretrained}"


class Segmenter:
    """CLIP + a host attention (+ FSA): ``segment(image, classes)`` → ``SegmentationResult``.

    Example:
        >>> seg = Segmenter.from_pretrained("ViT-B-16", checkpoint="clip.pt", host="naclip")
        >>> result = seg.segment("photo.jpg", ["cat", "sofa; couch"])
        >>> result.labels.shape  # (H, W) of the input image
    """

    def __init__(self, clip: torch.nn.Module, *, model_name: str, host: str = DEFAULT_HOST,
                 proxy: torch.nn.Module | None = None, proxy_spec: ProxySpec | None = None,
                 feedback: bool = True, lam: float | None = None, device: str = "auto",
                 precision: str = "auto", weights_id: str | None = None,
                 text_cache_dir: Path | None = None, batch_size: int = 8,
                 proxy_weights_id: str | None = None) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.model_name = model_name
        self.host = get_host(host)
        if self.host.uses_proxy and (proxy is None or proxy_spec is None):
            raise ConfigError(f"host {host!r} needs a proxy model")
        self.clip = clip.eval().to(self.device)
        self.visual = self.clip.visual.to(self.dtype)
        self.proxy_spec = proxy_spec if self.host.uses_proxy else None
        self.proxy = proxy.eval().to(self.device, self.dtype) if self.proxy_spec else None
        self.feedback = feedback
        if proxy_spec is not None and proxy_spec.lam is not None and self.host.uses_proxy:
            default = proxy_spec.lam
        else:
            default = default_lam(model_name)
        self.lam = float(lam) if lam is not None else default
        self.batch_size = batch_size
        self.patch = patch_size(self.visual)
        self.network = network_of(self.clip)
        self.crop_model = CropModel(self.visual, self.host, self.proxy, self.proxy_spec,
                                    input_mean=self.network.mean, input_std=self.network.std)
        import open_clip

        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.weights_id = weights_id
        self.text_cache = TextCache(text_cache_dir, self.text_identity() if weights_id else None)
        self.proxy_weights_id = proxy_weights_id if self.proxy_spec else None
        self._mean = torch.tensor(self.network.mean).view(3, 1, 1) * 255.0
        self._std = torch.tensor(self.network.std).view(3, 1, 1) * 255.0

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_BACKBONE,
        *,
        pretrained: str | None = None,
        checkpoint: str | Path | None = None,
        host: str = DEFAULT_HOST,
        proxy: str = DEFAULT_PROXY,
        proxy_checkpoint: str | Path | None = None,
        feedback: bool = True,
        lam: float | None = None,
        device: str = "auto",
        precision: str = "auto",
        text_cache: bool = True,
    ) -> "Segmenter":
        """Load CLIP (``open_clip.create_model(model)``) with a pretrained tag or a local
        file, and the proxy for the proxyclip host (timm) likewise. With no arguments: the
        reference configuration, ViT-B-16/openai + DINO ViT-B/8 ProxyCLIP + FSA."""
        host_obj = get_host(host)
        spec = PROXIES.get(proxy) if host_obj.uses_proxy else None
        resolve_precision(precision, resolve_device(device))  # bad settings fail before loading
        if checkpoint is None and pretrained is None:
            pretrained = default_pretrained(model)
        clip = load_clip(model, pretrained, checkpoint)
        proxy_model = load_proxy(spec, proxy_checkpoint) if spec is not None else None
        return cls(clip, model_name=model, host=host, proxy=proxy_model, proxy_spec=spec,
                   feedback=feedback, lam=lam, device=device, precision=precision,
                   weights_id=_weights_id(model, pretrained, checkpoint),
                   proxy_weights_id=(_weights_id(spec.name, "timm", proxy_checkpoint)
                                     if spec is not None else None),
                   text_cache_dir=cache_dir() if text_cache else None)

    @property
    def pad_multiple(self) -> int:
        """Crops are padded to a multiple of this: the host's own (ProxyCLIP 56) or the patch."""
        return self.host.pad_multiple or self.patch

    def lam_for(self, lam: float | None) -> float:
        """FSA's λ for a call: the given one, else the Segmenter's default."""
        return self.lam if lam is None else float(lam)

    def encode_text(self, classes: ClassList | str | Sequence[str]) -> torch.Tensor:
        """(C, E) L2-normalised embeddings, one row per class *name* (fp32)."""
        names = _as_classes(classes).flat_names
        return self.text_cache.embeddings(self.clip, self.tokenizer, names, self.device)

    def _check(self, window: int, stride: int, logit_scale: float, short_side: int | None) -> None:
        if window < self.patch or stride < 1:
            raise ConfigError(f"window must be ≥ the patch size ({self.patch}) and stride ≥ 1")
        if stride > window:
            raise ConfigError("stride larger than the window leaves pixels uncovered")
        if logit_scale <= 0:
            raise ConfigError("logit scale must be positive")
        if short_side is not None and short_side < self.patch:
            raise ConfigError(f"short side must be ≥ the patch size ({self.patch})")

    def prepare(self, image: ImageLike, short_side: int | None = 336) -> "PreparedImage":
        """Decode and resize one image for the model (CPU; safe to run in a worker thread)."""
        rgb = read_image(image)
        img = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float()
        img = resize_image(img, protocol_size(img.shape[1], img.shape[2], short_side))
        return PreparedImage(rgb, ((img - self._mean) / self._std), short_side)

    @torch.inference_mode()
    def segment(
        self,
        image: ImageLike,
        classes: ClassList | str | Sequence[str],
        *,
        short_side: int | None = 336,
        window: int = 336,
        stride: int = 112,
        logit_scale: float = 40.0,
        prob_threshold: float = 0.0,
        lam: float | None = None,
        feedback: bool | None = None,
        compare: bool = False,
    ) -> SegmentationResult:
        """Segment one image (path, PIL image or (H, W, 3) uint8 RGB array).

        classes: "a,b; c" or a list (one class per item, ";" between names).
        prob_threshold sends pixels whose top probability is lower to the first class.
        Returns labels (H, W) and probs (K, H, W) at the input image's size; with
        ``compare`` also baseline_labels, the host alone (FSA off), from the same pass.
        """
        return self.segment_batch([image], classes, short_side=short_side, window=window,
                                  stride=stride, logit_scale=logit_scale,
                                  prob_threshold=prob_threshold, lam=lam, feedback=feedback,
                                  compare=compare)[0]

    @torch.inference_mode()
    def segment_batch(
        self,
        images: Sequence["ImageLike | PreparedImage"],
        classes: ClassList | str | Sequence[str],
        *,
        short_side: int | None = 336,
        window: int = 336,
        stride: int = 112,
        logit_scale: float = 40.0,
        prob_threshold: float = 0.0,
        lam: float | None = None,
        feedback: bool | None = None,
        compare: bool = False,
    ) -> list[SegmentationResult]:
        """Segment several images; their windows share batches where crop sizes match.

        Equal to calling ``segment`` on each (each window's result depends on that window
        alone). ``images`` may be already ``prepare``d with the same ``short_side``.
        ``compare`` also gives each result the host-only labels (same pass, no extra forward).
        """
        self._check(window, stride, logit_scale, short_side)
        cl = _as_classes(classes)
        t0 = time.perf_counter()
        text = self.encode_text(cl).to(self.dtype)
        prepared = [im if isinstance(im, PreparedImage) else self.prepare(im, short_side)
                    for im in images]
        for p in prepared:
            if p.short_side != short_side:
                raise ConfigError("image prepared with another short side")
        t1 = time.perf_counter()
        fb = self.feedback if feedback is None else feedback
        lam_value = self.lam_for(lam)

        def crop_fn(crops: torch.Tensor) -> torch.Tensor:
            return crop_logits(self.crop_model, crops, text, feedback=fb, lam=lam_value,
                               window=window, also_baseline=compare)

        stitched = slide_many([p.tensor.to(self.device, self.dtype) for p in prepared], crop_fn,
                              window=window, stride=stride,
                              pad_multiple=self.pad_multiple,
                              batch_size=self.batch_size)
        t2 = time.perf_counter()
        share = (t2 - t1) / len(prepared)
        results = []
        C = len(cl.flat_names)
        for p, logits in zip(prepared, stitched):
            t3 = time.perf_counter()
            baseline = None
            if compare:
                base_probs = class_probabilities(logits[C:], p.rgb.shape[:2], logit_scale,
                                                 cl.name_to_class)
                baseline = labels_from_probs(base_probs, prob_threshold).cpu().numpy().astype(np.int64)
                logits = logits[:C]
            probs = class_probabilities(logits, p.rgb.shape[:2], logit_scale, cl.name_to_class)
            labels = labels_from_probs(probs, prob_threshold)
            post = time.perf_counter() - t3
            timings = {"text_s": t1 - t0, "model_s": share,
                       "total_s": (t1 - t0) / len(prepared) + share + post}
            meta = self._meta(fb, lam, timings, short_side=short_side, window=window, stride=stride,
                              logit_scale=logit_scale, prob_threshold=prob_threshold)
            results.append(SegmentationResult(
                labels=labels.cpu().numpy().astype(np.int64), probs=probs.float().cpu().numpy(),
                classes=cl.labels, names=cl.names, meta=meta, baseline_labels=baseline))
        return results

    def explain(self, image: ImageLike, classes: ClassList | str | Sequence[str],
                points: Sequence[tuple[int, int]] | None = None, **settings):
        """What the model attends to at ``points`` ((x, y) pixels; default: each class's most
        confident pixel): an ``Explanation`` with the rows of A, A_fb and A', FSA's P, the
        nucleus cut, and the host-only and FSA masks. Settings as for ``segment``."""
        from fbseg.pipeline.explain import explain

        return explain(self, image, _as_classes(classes), points, **settings)

    def text_identity(self) -> dict:
        """What decides a name's embedding: the model, its weights, the network they run in
        (activation, preprocessing), the text tower's precision and the protocol version."""
        return {"model": self.model_name, "weights": self.weights_id,
                "network": self.network.as_dict(), "text_precision": "float32",
                "protocol": PROTOCOL_VERSION}

    def identity(self, feedback: bool | None = None, lam: float | None = None) -> dict:
        """Everything that decides the output besides the image and the settings (for
        cache keys and reports)."""
        fb = self.feedback if feedback is None else feedback
        return {"model": self.model_name, "weights": self.weights_id,
                "network": self.network.as_dict(), "protocol": PROTOCOL_VERSION,
                "host": self.host.name,
                "proxy": self.proxy_spec.name if self.proxy_spec else None,
                "proxy_weights": self.proxy_weights_id, "feedback": fb,
                "lam": self.lam_for(lam) if fb else None,
                "precision": str(self.dtype).replace("torch.", "")}

    def _meta(self, fb: bool, lam: float | None, timings: dict, **settings) -> dict:
        return {
            "fbseg_version": __version__,
            "model": self.model_name,
            "network": self.network.as_dict(),
            "host": self.host.name,
            "proxy": self.proxy_spec.name if self.proxy_spec else None,
            "feedback": fb,
            "settings": {
                **settings,
                "lam": self.lam_for(lam) if fb else None,
                "device": str(self.device), "precision": str(self.dtype).replace("torch.", ""),
            },
            "timings": {k: round(v, 4) for k, v in timings.items()},
        }


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the model: rgb (H, W, 3) uint8 as read; tensor (3, h, w) float32,
    CLIP-normalised at the protocol size for ``short_side``."""

    rgb: np.ndarray
    tensor: torch.Tensor
    short_side: int | None
