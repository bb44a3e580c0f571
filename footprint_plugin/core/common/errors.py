"""User-facing errors. Every message says what went wrong and how to fix it."""

from __future__ import annotations


class FootprintError(Exception):
    """Base class for errors a user can cause and fix (bad input, missing model, ...)."""


class InputError(FootprintError):
    """A raster or vector input is missing, unreadable or unsuitable."""


class ModelError(FootprintError):
    """A model name, card or weights file is unknown, invalid or does not match."""


class OutputError(FootprintError):
    """An output cannot be written (unwritable folder, disk full, ...)."""


class CanceledError(FootprintError):
    """The user canceled the operation; nothing was written at the output path."""

    def __init__(self, message: str = "Canceled by the user; no output was written.") -> None:
        super().__init__(message)
