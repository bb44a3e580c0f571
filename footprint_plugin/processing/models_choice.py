"""The model and device choices every algorithm offers: one place, so the toolbox, the GUI dialogs and
each algorithm list the same models and pick the same default."""

from __future__ import annotations

from qgis.core import QgsProcessingException

from ..core.common import vocabulary

DEVICES = list(vocabulary.DEVICES)


def model_names() -> list[str]:
    """Names of every bundled and user model, read from the cards (no torch needed).

    Never raises: it runs while QGIS registers the provider, where an exception aborts QGIS. Skipped
    cards are reported in the QGIS message log, naming the file and the field.
    """
    try:
        from ..core.zoo.modelcard import scan_models

        cards, problems = scan_models()
    except Exception as exc:  # noqa: BLE001 - registration must survive anything a model folder holds
        cards, problems = [], [f"Cannot list the models ({type(exc).__name__}: {exc})."]
    for problem in problems:
        _log_warning(problem)
    return [card.name for card in cards]


def _log_warning(message: str) -> None:
    from qgis.core import Qgis, QgsMessageLog

    QgsMessageLog.logMessage(message, "Building Footprints", Qgis.MessageLevel.Warning)


def default_model(names: list[str] | None = None) -> str | None:
    from ..core.zoo.modelcard import default_model_name

    names = model_names() if names is None else names
    try:
        preferred = default_model_name()
    except Exception:  # noqa: BLE001 - see model_names
        preferred = None
    return preferred if preferred in names else (names[0] if names else None)


def resolve_card(model_name: str | None):
    """The model card for a name (or the default model), with a how-to-fix error when there is none."""
    from ..core.zoo.modelcard import find_model

    name = model_name or default_model()
    if not name:
        raise QgsProcessingException(
            "No model is installed. Import one with Plugins > Building Footprints > Model manager…, "
            "or train one with footprint:trainmodel."
        )
    return find_model(name)
