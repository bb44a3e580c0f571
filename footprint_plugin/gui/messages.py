"""Engine warnings as the user reads them, each shown once (the helper lives in processing/messages.py)."""

from __future__ import annotations

from ..processing.messages import user_warnings, user_words

__all__ = ["user_warnings", "user_words"]
