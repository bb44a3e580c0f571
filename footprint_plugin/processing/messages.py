"""Engine warnings as the user reads them, each shown once. The Processing log and the GUI share this one
helper; the engine already words its warnings for users (core/engine/inference.py).

Some engine notes are details for the log only, never a warning: reworded here (e.g. the precision check).
"""

from __future__ import annotations

from collections.abc import Iterable

# Engine note (its start) -> the log line it becomes. Not a problem the user must act on.
LOG_ONLY_NOTES = {
    "Using full precision: the faster mode changed the result": "Running in full precision (bf16 changed this model's result)",
}


def user_words(message: str) -> str:
    """The message without the engine's 'Warning: ' prefix (QGIS marks warnings itself)."""
    text = message.strip()
    if text.lower().startswith("warning: "):
        text = text[len("warning: ") :]
    return text


def log_only_note(message: str) -> str | None:
    """The log wording of an engine note that is no warning, or None for a real warning."""
    text = user_words(message)
    return next((note for start, note in LOG_ONLY_NOTES.items() if text.startswith(start)), None)


def user_warnings(messages: Iterable[str]) -> list[str]:
    """De-duplicated, first occurrence first: a warning raised once per block or tile is shown once.
    Log-only notes are left out (see user_notes)."""
    return list(dict.fromkeys(user_words(m) for m in messages if m and m.strip() and log_only_note(m) is None))


def user_notes(messages: Iterable[str]) -> list[str]:
    """The log-only notes among the engine's messages, in their log wording, each once."""
    return list(dict.fromkeys(note for note in map(log_only_note, messages) if note))
