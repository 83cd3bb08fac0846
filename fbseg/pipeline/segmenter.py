"""The public entry point: load once, segment many images with any class list."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fbseg import __version__
from fbseg.classes import ClassList, parse_classes
from fbseg.errors import ConfigError
from fbseg.hosts import DEFAULT_HOST, HOSTS, build_host
from fbseg.hosts.base import Host, HostOptions
from fbseg.io import ImageLike, read_image
from fbseg.models.clip import (
    DEFAULT_BACKBONE,
    check_model_name,
    config_patch_size,
    default_lam,
    default_pretrained,
    load_clip,
    network_of,
)
from fbseg.models.clip_tower import patch_size
from fbseg.models.constants import on_device
from fbseg.models.text import TextCache, text_cache_root
from fbseg.models.weights import check_weights_file, weights_id
from fbseg.pipeline.config import (
    CUDA_GRAPHS,
    DEFAULTS,
    POST_PASS_BYTES,
    TOKENS_PER_FORWARD,
    Refinement,
    SegmentConfig,
)
from fbseg.pipeline.crop import CropModel, crop_logits
from fbseg.pipeline.device import for_device, resolve_device, resolve_precision
from fbseg.pipeline.graphs import GraphedForwards
from fbseg.pipeline.postprocess import device_results, results_from_device
from fbseg.pipeline.window import as_8bit, protocol_size, resize_image, slide_many
from fbseg.result import SegmentationResult

# Bumped whenever a change alters the numbers a given model, weights and settings produce, so
# no cache (text embeddings, eval counts) written before it is read after it.
PROTOCOL_VERSION = 2


def as_classes(classes: ClassList | str | Sequence[str]) -> ClassList:
    return classes if isinstance(classes, ClassList) else parse_classes(classes)


class Segmenter:
    """CLIP + a host attention (+ FSA): ``segment(image, classes)`` → ``SegmentationResult``.

    ``config`` holds the protocol (``SegmentConfig``); every call may override any of its
    fields by keyword. Example:
        >>> seg = Segmenter.from_pretrained("ViT-B-16", checkpoint="clip.pt", host="naclip")
        >>> result = seg.segment("photo.jpg", ["cat", "sofa; couch"], window=448)
        >>> result.labels.shape  # (H, W) of the input image
    """

    def __init__(
        self,
        clip: torch.nn.Module,
        *,
        model_name: str,
        host: Host | str = DEFAULT_HOST,
        config: SegmentConfig = DEFAULTS,
        device: str = "auto",
        precision: str = "auto",
        weights_id: str | None = None,
        text_cache_dir: Path | None = None,
        windows_per_forward: int | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.graphs = graphed_forwards(self.device, cuda_graphs)
        self.dtype = resolve_precision(precision, self.device)
        self.model_name = model_name
        host = build_host(host) if isinstance(host, str) else host
        self.host = host.to(self.device, self.dtype)
        self.clip = clip.eval().to(self.device)
        self.visual = self.clip.visual.to(self.dtype)
        self.config = config
        self.default_lam = self.host.lam if self.host.lam is not None else default_lam(model_name)
        self.windows_per_forward = windows_per_forward
        # bytes of full-size logits post-processed in one pass (POST_PASS_BYTES)
        self.post_pass_bytes = for_device(POST_PASS_BYTES, self.device)
        self.patch = patch_size(self.visual)
        self.network = network_of(self.clip)
        self.crop_model = CropModel(
            self.visual, self.host, input_mean=self.network.mean, input_std=self.network.std
        )
        import open_clip

        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.weights_id = weights_id
        self.text_cache = TextCache(text_cache_dir, self.text_identity() if weights_id else None)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_BACKBONE,
        *,
        pretrained: str | None = None,
        checkpoint: str | Path | None = None,
        host: str = DEFAULT_HOST,
        proxy: str | None = None,
        proxy_checkpoint: str | Path | None = None,
        config: SegmentConfig = DEFAULTS,
        device: str = "auto",
        precision: str = "auto",
        text_cache: bool = True,
        cuda_graphs: bool | None = None,
        **overrides,
    ) -> Segmenter:
        """Load CLIP (``open_clip.create_model(model)``) with a pretrained tag or a local
        file, and the host with what it owns (ProxyCLIP: the proxy, from timm, likewise).
        ``overrides`` (``feedback=False``, ``lam=2.0``, ``window=448`` ...) change ``config``.
        With no arguments: the reference configuration, ViT-B-16/openai + DINO ViT-B/8
        ProxyCLIP + FSA. ``cuda_graphs`` replays window-batch forwards as CUDA graphs (CUDA
        only; None: ``CUDA_GRAPHS``)."""
        host_entry = HOSTS.get(host)
        config = config.replace(**overrides)
        target = resolve_device(device)  # bad settings fail before loading:
        resolve_precision(precision, target)
        graphed_forwards(target, cuda_graphs)
        check_model_name(model)
        config.check(config_patch_size(model))
        host_entry.check_choice(proxy, proxy_checkpoint)
        if checkpoint is not None:
            check_weights_file(checkpoint, "--checkpoint")
        if checkpoint is None and pretrained is None:
            pretrained = default_pretrained(model)
        clip = load_clip(model, pretrained, checkpoint)
        built = host_entry.build(HostOptions(proxy=proxy, proxy_checkpoint=proxy_checkpoint))
        return cls(
            clip,
            model_name=model,
            host=built,
            config=config,
            device=device,
            precision=precision,
            weights_id=weights_id(model, pretrained, checkpoint),
            text_cache_dir=text_cache_root() if text_cache else None,
            cuda_graphs=cuda_graphs,
        )

    @property
    def feedback(self) -> bool:
        return self.config.feedback

    @property
    def lam(self) -> float:
        """FSA's λ of the Segmenter's config (the backbone's or the proxy's when unset)."""
        return self.lam_for(self.config)

    @property
    def pad_multiple(self) -> int:
        """Crops are padded to a multiple of this: the host's own (ProxyCLIP 56) or the patch."""
        return self.host.pad_multiple or self.patch

    def lam_for(self, config: SegmentConfig) -> float:
        """FSA's λ for a call: the config's, else the host's or the backbone's default."""
        return self.default_lam if config.lam is None else float(config.lam)

    def resolve(self, config: SegmentConfig | None = None, **overrides) -> SegmentConfig:
        """The settings of one call: ``config`` (default: the Segmenter's) with ``overrides``,
        checked against this model."""
        cfg = (config or self.config).replace(**overrides)
        cfg.check(self.patch)
        return cfg

    def encode_text(self, classes: ClassList | str | Sequence[str]) -> torch.Tensor:
        """(C, E) L2-normalised embeddings, one row per class *name* (fp32)."""
        names = as_classes(classes).flat_names
        return self.text_cache.embeddings(self.clip, self.tokenizer, names, self.device)

    def names_to_encode(self, classes: ClassList | str | Sequence[str]) -> list[str]:
        """The names ``encode_text`` would still run through the text tower (not cached)."""
        return self.text_cache.uncached(as_classes(classes).flat_names)

    def prepare(
        self, image: ImageLike, config: SegmentConfig | None = None, **overrides
    ) -> PreparedImage:
        """Decode one image and note its protocol size (CPU; safe in a worker thread). The
        resize and normalisation run on the model's device (``model_input``): beside a GPU
        the reader threads only decode, and a uint8 image crosses instead of float32."""
        short_side = (config or self.config).replace(**overrides).short_side
        rgb = read_image(image)
        # pinned on CUDA: the copy to the GPU is queued, not waited on
        pixels = torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        pixels.numpy()[...] = rgb
        return PreparedImage(rgb, pixels, protocol_size(*rgb.shape[:2], short_side), short_side)

    def model_input(self, prepared: PreparedImage) -> torch.Tensor:
        """(3, h, w) float32 on the model's device: the image resized to its protocol size
        (bilinear, rounded as an 8-bit resize would be) and normalised with the network's
        mean and std."""
        return self.normalise(self.protocol_pixels(prepared))

    def protocol_pixels(self, prepared: PreparedImage) -> torch.Tensor:
        """(3, h, w) float32 0–255 on the model's device: the image resized bilinearly to its
        protocol size, not yet rounded (``normalise`` does that)."""
        img = prepared.pixels.to(self.device, non_blocking=True).permute(2, 0, 1).float()
        return resize_image(img, prepared.size)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """``protocol_pixels`` (…, 3, h, w) rounded as an 8-bit resize would leave them, then
        normalised with the network's mean and std. Pixel by pixel, so a batch of crops cut
        from the pixels gets what the same crops cut from the normalised image would: a
        call normalises its window batches, a few operations each, not every image."""
        mean = self._on_pixel_scale(self.network.mean)
        return (as_8bit(pixels) - mean) / self._on_pixel_scale(self.network.std)

    def _on_pixel_scale(self, values: Sequence[float]) -> torch.Tensor:
        """Per-channel ``values`` × 255 as (3, 1, 1) float32 on the model's device (once)."""
        return on_device(
            lambda: torch.tensor(values).view(3, 1, 1) * 255.0,
            ("pixel-scale", tuple(values)),
            self.device,
            torch.float32,
        )

    @torch.inference_mode()
    def segment(
        self,
        image: ImageLike,
        classes: ClassList | str | Sequence[str],
        config: SegmentConfig | None = None,
        *,
        compare: bool = False,
        **overrides,
    ) -> SegmentationResult:
        """Segment one image (path, PIL image or (H, W, 3) uint8 RGB array).

        classes: "a,b; c" or a list (one class per item, ";" between names). ``config`` and
        ``overrides`` as in ``resolve``. Returns labels (H, W) and probs (K, H, W) at the
        input image's size; with ``compare`` also baseline_labels, the host alone (FSA off),
        from the same pass.
        """
        return self.segment_batch([image], classes, config, compare=compare, **overrides)[0]

    @torch.inference_mode()
    def segment_batch(
        self,
        images: Sequence[ImageLike | PreparedImage],
        classes: ClassList | str | Sequence[str],
        config: SegmentConfig | None = None,
        *,
        compare: bool = False,
        **overrides,
    ) -> list[SegmentationResult]:
        """Segment several images; their windows share batches where crop sizes match.

        Equal to calling ``segment`` on each (each window's result depends on that window
        alone). ``images`` may be already ``prepare``d with the same short side.
        ``compare`` also gives each result the host-only labels (same pass, no extra forward).
        """
        cfg = self.resolve(config, **overrides)
        cl = as_classes(classes)
        if not images:
            return []
        t0 = time.perf_counter()
        text = self.encode_text(cl).to(self.dtype)
        prepared = [im if isinstance(im, PreparedImage) else self.prepare(im, cfg) for im in images]
        if any(p.short_side != cfg.short_side for p in prepared):
            raise ConfigError("image prepared with another short side")
        t1 = time.perf_counter()
        lam_value = self.lam_for(cfg)

        def forward(crops: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return crop_logits(
                self.crop_model,
                crops,
                text,
                feedback=cfg.feedback,
                lam=lam_value,
                window=cfg.window,
                also_baseline=compare,
            )

        def crop_fn(crops: torch.Tensor) -> torch.Tensor:
            crops = crops.to(self.dtype)  # one cast per window batch, not one per image
            if self.graphs is None:
                return forward(crops, text)
            key = (cfg.feedback, lam_value, cfg.window, compare)  # what a recording fixes
            return self.graphs.run(key, forward, crops, text)

        pixels = [self.protocol_pixels(p) for p in prepared]
        stitched = slide_many(
            pixels,
            crop_fn,
            window=cfg.window,
            stride=cfg.stride,
            pad_multiple=self.pad_multiple,
            windows_per_forward=self.windows_per_forward or self._windows_for,
            on_shrink=self._shrink_window_batch,
            crop_transform=self.normalise,
            few_shapes=self.graphs is not None,  # each batch shape is one recording
        )
        t2 = time.perf_counter()
        pending = device_results(
            stitched,
            [p.rgb.shape[:2] for p in prepared],
            cfg,
            cl.name_to_class,
            [self.normalise(x) for x in pixels] if cfg.refine is not Refinement.NONE else None,
            compare=compare,
            pass_bytes=self.post_pass_bytes,
        )
        del stitched
        results = results_from_device(pending, cl.labels, cl.names)  # the one wait
        n = len(prepared)
        timings = {
            "text_s": t1 - t0,
            "model_s": (t2 - t1) / n,  # on a GPU: the time to queue it (the work is async)
            "total_s": (time.perf_counter() - t0) / n,
        }
        for r in results:
            r.meta = self._meta(cfg, timings)
        return results

    def _windows_for(self, height: int, width: int) -> int:
        """Windows of this padded size per forward: ``TOKENS_PER_FORWARD`` over the tokens one
        window puts through CLIP or the host's own model (used unless ``windows_per_forward``
        is set, or was lowered by an out-of-memory retry)."""
        tokens = self.host.tokens_per_crop(height, width, self.patch)
        return max(1, TOKENS_PER_FORWARD // max(1, tokens))

    def _shrink_window_batch(self, size: int) -> None:
        """A window batch ran out of memory: later calls start from the size that fitted,
        and recorded forwards give their memory back."""
        self.windows_per_forward = size
        if self.graphs is not None:
            self.graphs.clear()

    def explain(
        self,
        image: ImageLike,
        classes: ClassList | str | Sequence[str],
        points: Sequence[tuple[int, int]] | None = None,
        config: SegmentConfig | None = None,
        **overrides,
    ):
        """What the model attends to at ``points`` ((x, y) pixels; default: each class's most
        confident pixel): an ``Explanation`` with the rows of A, A_fb and A', FSA's P, the
        nucleus cut, and the host-only and FSA masks. Settings as for ``segment``."""
        from fbseg.pipeline.explain import explain

        return explain(self, image, as_classes(classes), points, self.resolve(config, **overrides))

    def text_identity(self) -> dict:
        """What decides a name's embedding: the model, its weights, the network they run in
        (activation, preprocessing), the text tower's precision and the protocol version."""
        return {
            "model": self.model_name,
            "weights": self.weights_id,
            "network": self.network.as_dict(),
            "text_precision": "float32",
            "protocol": PROTOCOL_VERSION,
        }

    def identity(self, config: SegmentConfig | None = None) -> dict:
        """Everything that decides the output besides the image and the protocol settings
        (for cache keys and reports)."""
        cfg = config or self.config
        return {
            "model": self.model_name,
            "weights": self.weights_id,
            "network": self.network.as_dict(),
            "protocol": PROTOCOL_VERSION,
            **self.host.identity(),
            "feedback": cfg.feedback,
            "lam": self.lam_for(cfg) if cfg.feedback else None,
            "precision": str(self.dtype).replace("torch.", ""),
        }

    def _meta(self, cfg: SegmentConfig, timings: dict) -> dict:
        host = self.host.identity()
        return {
            "fbseg_version": __version__,
            "model": self.model_name,
            "network": self.network.as_dict(),
            "host": host["host"],
            "proxy": host["proxy"],
            "feedback": cfg.feedback,
            "settings": {
                **cfg.protocol(),
                "lam": self.lam_for(cfg) if cfg.feedback else None,
                "device": str(self.device),
                "precision": str(self.dtype).replace("torch.", ""),
            },
            "timings": {k: round(v, 4) for k, v in timings.items()},
        }


def graphed_forwards(device: torch.device, cuda_graphs: bool | None) -> GraphedForwards | None:
    """Where window-batch forwards are replayed as CUDA graphs: on CUDA when ``cuda_graphs``
    (None: ``CUDA_GRAPHS``) asks for it; asked for elsewhere, a ConfigError."""
    wanted = CUDA_GRAPHS if cuda_graphs is None else cuda_graphs
    if cuda_graphs and device.type != "cuda":
        raise ConfigError(f"CUDA graphs need a CUDA device, not {device.type}")
    return GraphedForwards() if wanted and device.type == "cuda" else None


@dataclass(frozen=True)
class PreparedImage:
    """An image read for the model: rgb (H, W, 3) uint8 as read; pixels the same as a
    tensor (pinned beside a GPU); size (h, w), the protocol size for ``short_side``, to
    which ``Segmenter.model_input`` resizes it on the model's device."""

    rgb: np.ndarray
    pixels: torch.Tensor
    size: tuple[int, int]
    short_side: int | None
