"""The per-process model cache of a batch: each process (this one, or a Dask worker) loads a card's network
once, and prepares (copies, fuses) it once per device.

Its own module so that the block runner and the Dask worker set-up both use it without importing each other.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Union

from ..zoo.modelcard import ModelCard, load_card

_MODEL_CACHE: dict[tuple[str, str], Any] = {}
_MODEL_LOCK = threading.Lock()
_PREPARED: dict[tuple[int, str], tuple[Any, Any]] = {}


def cached_model(card_path: Union[str, Path]) -> tuple[ModelCard, Any]:
    """(card, network) for a card file, loaded and verified once per process."""
    card = load_card(card_path)
    key = (str(Path(card_path).resolve()), card.sha256 or "")
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            from ..zoo.weights import load_model

            _MODEL_CACHE[key] = load_model(card, "cpu")
        return card, _MODEL_CACHE[key]


def prepared_once(model: Any, device: str) -> Any:
    """prepare_model memoised per (network, device): a block then skips the copy and fusing (~0.5 s on a
    CPU, as long as a whole block on a GPU). Reused only while the copy still sits on that device (the
    engine moves a runner's network to the CPU after a GPU out-of-memory)."""
    from ..engine.device import select_device
    from ..engine.runner import prepare_model

    choice = select_device(device)
    key = (id(model), str(choice.device))
    cached = _PREPARED.get(key)
    # The network is kept with its copy: an id() is only unique while its object is alive.
    if cached is not None and cached[0] is model:
        parameter = next(cached[1].parameters(), None)
        if parameter is None or str(parameter.device).startswith(choice.kind):
            return cached[1]
    prepared = prepare_model(model, choice)
    _PREPARED[key] = (model, prepared)
    return prepared
