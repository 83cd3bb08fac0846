"""The host registry: every last-block attention fbseg can run, FSA on or off.

Adding a host is one file (a ``Host`` subclass with its ``last_block``, in this folder) plus
one ``HostEntry`` here. The CLI's choices and help, ``fbseg models`` and the tests (against
``tests/naive.py``) read this registry. Entries are plain data, so listing them does not
import torch; the class is imported when a host is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fbseg.registry import Registry

if TYPE_CHECKING:
    from fbseg.hosts.base import Host, HostOptions


@dataclass(frozen=True)
class HostEntry:
    """A host: its name, where its class lives ("module:Class"), what it does."""

    name: str
    target: str
    description: str
    needs_proxy: bool = False  # whether --proxy/--proxy-checkpoint apply
    keeps_residual: bool = False

    def load(self) -> type[Host]:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)

    def check_choice(self, proxy: str | None, proxy_checkpoint) -> None:
        """What building this host would refuse, found before anything loads: an unknown
        proxy, or a proxy weights file that is not there (hosts without a proxy ignore both)."""
        if not self.needs_proxy:
            return
        from fbseg.models.proxy_specs import DEFAULT_PROXY, PROXIES
        from fbseg.models.weights import check_weights_file

        PROXIES.get(proxy or DEFAULT_PROXY)
        if proxy_checkpoint is not None:
            check_weights_file(proxy_checkpoint, "--proxy-checkpoint")

    def build(self, options: HostOptions | None = None) -> Host:
        """An instance, with what it owns loaded (ProxyCLIP: its proxy)."""
        from fbseg.hosts.base import HostOptions

        return self.load().build(options or HostOptions())


HOSTS: Registry[HostEntry] = Registry("host")
for _entry in (
    HostEntry(
        "maskclip",
        "fbseg.hosts.maskclip:MaskCLIP",
        "identity attention (values only), residual + FFN kept",
        keeps_residual=True,
    ),
    HostEntry(
        "sclip",
        "fbseg.hosts.sclip:SCLIP",
        "q-q + k-k correlative attention, residual + FFN kept",
        keeps_residual=True,
    ),
    HostEntry("clearclip", "fbseg.hosts.clearclip:ClearCLIP", "q-q attention, no residual, no FFN"),
    HostEntry(
        "naclip",
        "fbseg.hosts.naclip:NACLIP",
        "k-k attention + Gaussian neighbourhood (σ=5), no residual, no FFN",
    ),
    HostEntry(
        "proxyclip",
        "fbseg.hosts.proxyclip:ProxyCLIP",
        "proxy attention from DINO/DINOv2/SAM/MAE features, no residual, no FFN",
        needs_proxy=True,
    ),
):
    HOSTS.register(_entry.name, _entry)

DEFAULT_HOST = "proxyclip"


def build_host(name: str, options: HostOptions | None = None) -> Host:
    """An instance of the named host, with what it owns loaded (ProxyCLIP: its proxy)."""
    return HOSTS.get(name).build(options)


__all__ = ["HOSTS", "DEFAULT_HOST", "HostEntry", "build_host"]
