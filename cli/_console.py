"""The stderr console and the error → exit-code mapping, shared by every command."""
from __future__ import annotations

import sys

from rich.console import Console

err = Console(stderr=True, highlight=False)


def fail(message: str, code: int) -> "NoReturn":  # noqa: F821
    import typer

    err.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code)


def stdout_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
