"""Random weights laid out where open_clip looks for a pretrained tag's file: the Hugging
Face hub cache (``models--ORG--NAME/snapshots/REV/FILE``), read back offline."""

from __future__ import annotations

from pathlib import Path

import torch

REVISION = "0" * 40


def hub_repo_of(model: str, tag: str) -> str:
    """The hub repository open_clip's pretrained table names for ``model``/``tag``."""
    from open_clip import pretrained

    hub = pretrained.get_pretrained_cfg(model, tag)["hf_hub"]
    return hub.rstrip("/")


def lay_in_hub_cache(cache: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """Write ``state`` as the repository's ``open_clip_model.safetensors`` (fp16 to keep the
    big towers small on disk; loading casts back) with the ref ``main`` pointing at it."""
    from safetensors.torch import save_file

    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(REVISION)
    target = snapshot / "open_clip_model.safetensors"
    if not target.exists():
        save_file({k: v.detach().half().contiguous() for k, v in state.items()}, str(target))
    return target


def random_state(model: str, seed: int = 0) -> dict[str, torch.Tensor]:
    import open_clip

    torch.manual_seed(seed)
    return open_clip.create_model(model).state_dict()
