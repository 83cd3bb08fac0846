"""Exception hierarchy. Each error maps to one CLI exit code and carries an optional hint."""

from __future__ import annotations


class FbsegError(Exception):
    """Base of every error fbseg raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        text = str(self)
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(FbsegError, ValueError):
    """Bad option values, bad class lists: a usage error."""

    exit_code = 2


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup missed; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class WeightsUnavailableError(FbsegError):
    """Weights cannot be had: offline and not cached, bad or mismatched checkpoint."""

    exit_code = 3


class InputError(FbsegError):
    """One input image could not be processed (unreadable, not an image, too large)."""

    exit_code = 4


class OutputError(FbsegError):
    """An output could not be written."""

    exit_code = 4


class NoInputError(FbsegError):
    """No input path matched."""

    exit_code = 5
