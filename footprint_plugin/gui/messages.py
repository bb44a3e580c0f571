"""Engine warnings in a user's words, each shown once (the wording lives in processing/messages.py)."""

from __future__ import annotations

from ..processing.messages import USER_WORDS, user_warnings, user_words

__all__ = ["USER_WORDS", "user_warnings", "user_words"]
