"""`fbseg models`: what can run, as rich tables over the library's catalog."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from ._console import err, stdout_line


def models(as_json: bool = typer.Option(False, "--json", help="Print JSON to stdout.")) -> None:
    from fbseg import catalog

    data = {
        "backbones": catalog.list_backbones(),
        "hosts": catalog.list_hosts(),
        "proxies": catalog.list_proxies(),
        "presets": catalog.list_presets(),
        "engines": catalog.list_engines(),
    }
    if as_json:
        stdout_line(json.dumps(data, indent=2))
        return
    t = Table(title="Engines (--engine)")
    for col in ("engine", "what", "needs", "default weights cached"):
        t.add_column(col)
    for e in data["engines"]:
        needs = escape(f'pip install "fbseg[{e["extra"]}]"') if e["extra"] else ""
        t.add_row(e["name"], e["description"], needs, "yes" if e["cached"] else "no")
    err.print(t)
    t = Table(title="CLIP backbones (other open_clip CLIP ViTs with a class token also work)")
    for col in ("model", "default weights", "activation", "λ", "cached", "notes"):
        t.add_column(col)
    for b in data["backbones"]:
        t.add_row(
            b["name"],
            b["pretrained"],
            b["activation"],
            str(b["lam"]),
            "yes" if b["cached"] else "no",
            b["notes"],
        )
    err.print(t)
    t = Table(title="Hosts (--host)")
    for col in ("host", "attention", "proxy"):
        t.add_column(col)
    for h in data["hosts"]:
        t.add_row(h["name"], h["description"], "yes" if h["uses_proxy"] else "")
    err.print(t)
    t = Table(title="Proxies (--proxy, for --host proxyclip)")
    for col in ("proxy", "timm model", "λ", "cached"):
        t.add_column(col)
    for p in data["proxies"]:
        t.add_row(
            p["name"], p["timm_name"], str(p["lam"] or "backbone's"), "yes" if p["cached"] else "no"
        )
    err.print(t)
    t = Table(title="Presets (--preset): a method's host and official protocol")
    for col in ("preset", "host", "segment / explain (COCO-Stuff config)", "differs per dataset"):
        t.add_column(col)
    for p in data["presets"]:
        seg = p["segment"]
        differs = sorted(d for d, proto in p["datasets"].items() if proto != seg)
        t.add_row(p["name"], p["host"], _protocol_text(seg), ", ".join(differs))
    err.print(t)


def _protocol_text(proto: dict) -> str:
    window = "whole image" if proto["window"] is None else f"{proto['window']}/{proto['stride']}"
    text = f"short {proto['short_side']}, window {window}, scale {proto['logit_scale']:g}"
    if proto.get("refine"):
        text += f", {proto['refine']} {proto['pamr_steps']}×{proto['pamr_dilations']}"
    return text
