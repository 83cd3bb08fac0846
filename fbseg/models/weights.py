"""Getting weights: pretrained tags through open_clip/timm's normal caches, local files,
and a fast, clear failure when neither can be had (offline, no cache)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from fbseg.errors import FbsegError, WeightsUnavailableError

T = TypeVar("T")
HUB_HOST = ("huggingface.co", 443)


def _env_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in {"1", "true", "yes", "on"}


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the weights hub answers a TCP connect within ``timeout`` seconds."""
    if _env_offline():
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub answer from its cache only (it checks this flag per call)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """open_clip logs to the root logger (a warning for a model built without weights, an
    error per failed download); fbseg reports those itself, once."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def fetch_pretrained(what: str, flag: str, build: Callable[[], T]) -> T:
    """Run ``build`` (which downloads through the hub cache) or fail fast with exit code 3.

    When the hub is unreachable the build runs cache-only, so a cached model still loads and
    a missing one fails at once instead of after the libraries' minute of retries.
    """
    online = hub_reachable()
    try:
        with quiet_root_logger():
            if online:
                return build()
            with _hub_offline():
                return build()
    except FbsegError:
        raise
    except Exception as exc:  # network, cache and hub errors all mean "no weights"
        where = "download failed" if online else "offline and not in the cache"
        raise WeightsUnavailableError(
            f"weights for {what} unavailable ({where}: {exc.__class__.__name__})",
            hint=f"pass {flag} FILE with local weights, or run once with network access",
        ) from None


def weights_id(name: str, tag: str | None, checkpoint: str | Path | None) -> str:
    """The identity of a model's weights for cache keys: the file (path, size, mtime) or the
    pretrained tag."""
    if checkpoint is not None:
        st = Path(checkpoint).stat()
        return f"{name}|file:{Path(checkpoint).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return f"{name}|{tag}"


def hf_cached(repo_id: str | None) -> bool:
    """Whether a hub repository has files in the local huggingface cache."""
    if not repo_id:
        return False
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.strip("/").replace("/", "--"))
    return (folder / "snapshots").is_dir() and any((folder / "snapshots").iterdir())


# Attributes OpenAI's TorchScript CLIP archives keep beside the weights.
_TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (OpenAI's original CLIP ``.pt`` files are):
    a zip holding the scripted ``code/`` next to the tensors."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def check_weights_file(path: str | Path, flag: str) -> Path:
    """``path`` as a Path; a WeightsUnavailableError naming ``flag`` when no such file exists
    (checked before anything loads, and again when it is read)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"{flag} {path}: no such file")
    return path


def read_state_dict(path: str | Path, flag: str) -> dict:
    """A state dict from a local file: plain ``torch.save(state_dict)``, safetensors, a
    TorchScript archive (OpenAI's format), or a training checkpoint holding one under
    "state_dict"/"model" (a "module." prefix is dropped)."""
    import torch

    path = check_weights_file(path, flag)
    try:
        if is_torchscript(path):
            with warnings.catch_warnings():  # torch marks TorchScript as deprecated
                warnings.simplefilter("ignore", FutureWarning)
                state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            for key in _TORCHSCRIPT_EXTRAS:
                state.pop(key, None)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"{flag} {path}: not a readable weights file ({exc.__class__.__name__})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise WeightsUnavailableError(f"{flag} {path}: holds no state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_into(model, state: dict, what: str, flag: str, path: str | Path) -> None:
    """Load strictly; a mismatch is a wrong-architecture checkpoint (exit code 3)."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise WeightsUnavailableError(
            f"{flag} {path} does not match {what}: {detail[:160]}",
            hint="check the architecture name (--model) and, for a copy of a pretrained tag, --pretrained",
        ) from None
