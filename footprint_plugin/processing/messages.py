"""Engine warnings in a user's words, each shown once. The Processing log and the GUI's message bar share
this one table; the engine keeps its precise wording for the CLI and its tests."""

from __future__ import annotations

from collections.abc import Iterable

# (text the engine's message contains, what the user reads instead).
USER_WORDS: tuple[tuple[str, str], ...] = (
    ("did not match fp32", "Using full precision: the faster mode changed the result on this model."),
)


def user_words(message: str) -> str:
    text = message.strip()
    if text.lower().startswith("warning: "):
        text = text[len("warning: ") :]
    for needle, words in USER_WORDS:
        if needle in text:
            return words
    return text


def user_warnings(messages: Iterable[str]) -> list[str]:
    """Translated and de-duplicated, first occurrence first."""
    return list(dict.fromkeys(user_words(m) for m in messages if m and m.strip()))
