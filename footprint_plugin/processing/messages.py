"""Engine warnings as the user reads them, each shown once. The Processing log and the GUI's message bar
share this one helper; the engine already words its warnings for users (core/engine/inference.py)."""

from __future__ import annotations

from collections.abc import Iterable


def user_words(message: str) -> str:
    """The message without the engine's 'Warning: ' prefix (QGIS marks warnings itself)."""
    text = message.strip()
    if text.lower().startswith("warning: "):
        text = text[len("warning: ") :]
    return text


def user_warnings(messages: Iterable[str]) -> list[str]:
    """De-duplicated, first occurrence first: a warning raised once per block or tile is shown once."""
    return list(dict.fromkeys(user_words(m) for m in messages if m and m.strip()))
