"""The fbseg command line: parses options, calls the library, prints. No tensor code here.

Exit codes: 0 all inputs done (skipped existing outputs included), 1 internal error,
2 usage error, 3 weights unavailable, 4 at least one input failed, 5 no input matched.
"""

from __future__ import annotations

import sys

import typer

from . import eval as _eval
from . import explain as _explain
from . import models as _models
from . import segment as _segment

EXIT_CODES = """Exit codes: 0 all inputs done (skipped existing outputs included) · 1 internal error ·
2 usage error · 3 weights unavailable (offline, bad or mismatched checkpoint) ·
4 at least one input failed (the rest were done) · 5 no input matched."""

app = typer.Typer(
    name="fbseg",
    help="Segment any image with free-text classes (CLIP + feedback self-adaptive attention).\n\n"
    + EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)
app.command("segment", help=_segment.HELP + "\n\n" + EXIT_CODES)(_segment.segment)
app.command("explain", help=_explain.HELP + "\n\n" + EXIT_CODES)(_explain.explain_command)
app.command("eval", help=_eval.HELP + "\n\n" + EXIT_CODES)(_eval.eval_command)
app.command("models", help="List backbones, hosts and proxies, and which weights are cached.")(
    _models.models
)


def _version(value: bool) -> None:
    if value:
        from fbseg import __version__

        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """fbseg."""


def main() -> None:
    """Console-script entry: run the app; expected errors never show a traceback."""
    from fbseg.errors import FbsegError

    from ._console import err

    try:
        app(standalone_mode=True)
    except FbsegError as exc:  # raised outside a command's own handling
        from rich.markup import escape

        err.print(f"[red]error:[/red] {escape(exc.one_line())}", soft_wrap=True)
        sys.exit(exc.exit_code)
