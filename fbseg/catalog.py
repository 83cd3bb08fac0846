"""What can be run: backbones, hosts, proxies, and whether their weights are cached."""

from __future__ import annotations

from fbseg.hosts import HOSTS
from fbseg.models.clip import BACKBONES, tag_network
from fbseg.models.clip import is_cached as clip_cached
from fbseg.models.proxy_specs import PROXIES
from fbseg.models.proxy_specs import is_cached as proxy_cached


def list_backbones() -> list[dict]:
    """Each registered backbone, its default tag and the network that tag declares."""
    return [
        {
            "name": n,
            "pretrained": s.pretrained,
            "lam": s.lam,
            "notes": s.notes,
            "activation": tag_network(n, s.pretrained).as_dict()["activation"],
            "cached": clip_cached(n, s.pretrained),
        }
        for n, s in BACKBONES
    ]


def list_hosts() -> list[dict]:
    return [
        {
            "name": n,
            "description": h.description,
            "uses_proxy": h.needs_proxy,
            "residual": h.keeps_residual,
        }
        for n, h in HOSTS
    ]


def list_proxies() -> list[dict]:
    return [
        {"name": n, "timm_name": s.timm_name, "lam": s.lam, "cached": proxy_cached(s)}
        for n, s in PROXIES
    ]


def list_presets() -> list[dict]:
    """Each preset: its host, the protocol segment/explain use, and each dataset's."""
    from fbseg.eval.datasets import DATASETS
    from fbseg.presets import PRESETS

    return [
        {
            "name": n,
            "host": p.host,
            "source": p.source,
            "segment": p.config().protocol(),
            "datasets": {d: p.config(d).protocol() for d in DATASETS.names()},
        }
        for n, p in PRESETS
    ]


def list_engines() -> list[dict]:
    """Each engine, what it needs, and whether its default weights are cached."""
    from fbseg.engines import ENGINES
    from fbseg.models.clip import DEFAULT_BACKBONE, default_pretrained
    from fbseg.models.sam3 import is_cached as sam3_cached

    cached = {
        "clip": clip_cached(DEFAULT_BACKBONE, default_pretrained(DEFAULT_BACKBONE)),
        "sam3": sam3_cached(),
    }
    return [
        {"name": n, "description": e.description, "extra": e.extra, "cached": cached.get(n, False)}
        for n, e in ENGINES
    ]
