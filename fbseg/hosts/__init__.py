"""The host registry: every last-block attention fbseg can run, FSA on or off."""
from __future__ import annotations

from fbseg.registry import Registry
from fbseg.hosts.base import Host, LastBlock
from fbseg.hosts.clearclip import ClearCLIP
from fbseg.hosts.maskclip import MaskCLIP
from fbseg.hosts.naclip import NACLIP
from fbseg.hosts.sclip import SCLIP
from fbseg.hosts.proxyclip import ProxyCLIP

HOSTS: Registry[Host] = Registry("host")
for _host in (MaskCLIP(), SCLIP(), ClearCLIP(), NACLIP(), ProxyCLIP()):
    HOSTS.register(_host.name, _host)

DEFAULT_HOST = "proxyclip"


def get_host(name: str) -> Host:
    return HOSTS.get(name)


def list_hosts() -> list[str]:
    return HOSTS.names()


__all__ = ["HOSTS", "DEFAULT_HOST", "Host", "LastBlock", "get_host", "list_hosts"]
