"""The stderr console and the error → exit-code mapping, shared by every command."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console

err = Console(stderr=True, highlight=False)


def fail(message: str, code: int) -> NoReturn:  # noqa: F821
    import typer
    from rich.markup import escape

    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def stdout_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def guarded(debug: bool) -> Iterator[None]:
    """A command's body: an expected error becomes one red line and its exit code (a
    traceback only with --debug)."""
    from fbseg.errors import FbsegError

    try:
        yield
    except FbsegError as exc:
        if debug:
            raise
        fail(exc.one_line(), exc.exit_code)


def progress_bar(enabled: bool):
    """Done/total, images per second, ETA and the current item, on stderr; drawn only on a
    terminal and when enabled."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class ImagesPerSecond(TextColumn):
        def __init__(self) -> None:
            super().__init__("")

        def render(self, task):
            return Text(f"{task.speed:.2f} img/s" if task.speed else "– img/s")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        ImagesPerSecond(),
        TimeRemainingColumn(),
        console=err,
        disable=not (enabled and err.is_terminal),
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )
