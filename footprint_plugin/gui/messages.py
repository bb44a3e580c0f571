"""What one Detect run tells the user: one plain-words message for the message bar, details for the log.

The wording of engine warnings lives in processing/messages.py (shared with the Processing log).
"""

from __future__ import annotations

from typing import Any

from qgis.core import Qgis, QgsMessageLog

from ..processing.messages import user_notes, user_warnings, user_words

LOG_TAG = "Building Footprints"

__all__ = ["LOG_TAG", "detection_report", "log_details", "user_notes", "user_warnings", "user_words"]


def detection_report(ok: bool, canceled: bool, results: dict[str, Any], run: Any, layer_name: str) -> tuple:
    """(text, level, duration) of the run's one message-bar message; details go to log_details()."""
    if canceled:
        return f"Detection in {layer_name} canceled; nothing was added.", Qgis.MessageLevel.Info, 8
    if not ok:
        return f"Detection failed: {run.error_text()}", Qgis.MessageLevel.Critical, 0
    count = int(results.get("N_BUILDINGS", 0))
    text = (
        f"{count} building{'' if count == 1 else 's'} found in {layer_name} in {results.get('SECONDS', 0):.1f} s "
        f"({results.get('MP_PER_S', 0):.2f} MP/s) on {results.get('DEVICE_USED', '?')} "
        f"with {results.get('MODEL_USED', '?')}."
    )
    warnings = user_warnings(run.warnings)
    if warnings:
        text += f" {len(warnings)} note{'' if len(warnings) == 1 else 's'} in the Log Messages panel ({LOG_TAG})."
    return text, Qgis.MessageLevel.Success, 0


def log_details(run: Any, layer_name: str) -> list[str]:
    """Write the run's warnings and notes to the Log Messages panel (our tab); returns what was written."""
    lines = []
    for warning in user_warnings(run.warnings):
        QgsMessageLog.logMessage(f"{layer_name}: {warning}", LOG_TAG, Qgis.MessageLevel.Warning)
        lines.append(warning)
    for note in user_notes(run.warnings):
        QgsMessageLog.logMessage(f"{layer_name}: {note}", LOG_TAG, Qgis.MessageLevel.Info)
        lines.append(note)
    return lines
