"""Dialogs and background tasks. Dialogs only collect parameters; work runs as Processing algorithms in tasks."""

from __future__ import annotations
