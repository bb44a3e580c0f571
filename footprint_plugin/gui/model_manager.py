"""Model manager: list bundled and user models, show their cards, import and delete user models."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from qgis.PyQt.QtCore import Qt, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from .detect_dialog import card_html


def import_card_and_weights(card_file: Path, weights_file: Optional[Path] = None) -> Any:
    """Copy a card (and its weights) into the user model folder after checking them; returns the new card."""
    from ..core.errors import ModelError
    from ..core.modelcard import load_card, save_card, sha256_file, user_model_dir

    card = load_card(card_file)
    weights = Path(weights_file) if weights_file else card_file.parent / card.weights_file
    if not weights.is_file():
        raise ModelError(f"Weights file {weights} not found. Put it beside the card or pick it explicitly.")
    if card.sha256 and sha256_file(weights) != card.sha256:
        raise ModelError(f"{weights.name} does not match the card's sha256; the download is damaged or belongs to another model.")
    target_dir = user_model_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    target_card = target_dir / f"{card.name}.json"
    if target_card.exists():
        raise ModelError(f"A user model named '{card.name}' exists already. Delete it first or rename the card.")
    card.weights_file = f"{card.name}{weights.suffix or '.pt'}"
    card.sha256 = card.sha256 or sha256_file(weights)
    shutil.copy2(weights, target_dir / card.weights_file)
    save_card(card, target_card)
    return load_card(target_card)


SPACENET6_BANDS = ["HH", "HV", "VH", "VV"]


def import_spacenet6_baseline(weights_file: Path, name: str) -> Any:
    """Wrap a SpaceNet 6 baseline checkpoint (TernausNet UNet11 on quad-pol SAR) in a model card.

    The checkpoint's state_dict is checked against `unet_vgg11` key by key; in_channels come from its first conv.
    """
    import torch

    from ..core.errors import ModelError
    from ..core.modelcard import ModelCard, user_model_dir
    from ..core.models import create_model
    from ..core.zoo import extract_state_dict, load_state_dict_checked, save_model

    try:
        loaded = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means an unusable file
        raise ModelError(f"Cannot read {weights_file}: {exc}. Pick the baseline's .pth state_dict file.") from None
    state = extract_state_dict(loaded)
    first_conv = next((v for k, v in state.items() if k.endswith("weight") and v.ndim == 4), None)
    if first_conv is None:
        raise ModelError(f"{weights_file} has no convolution weights; it is not a SpaceNet 6 baseline checkpoint.")
    in_channels = int(first_conv.shape[1])
    model = create_model("unet_vgg11", in_channels, 1)
    load_state_dict_checked(model, state, str(weights_file))
    bands = SPACENET6_BANDS[:in_channels] if in_channels <= 4 else [f"band{i + 1}" for i in range(in_channels)]
    card = ModelCard(
        name=name,
        architecture="unet_vgg11",
        in_channels=in_channels,
        out_channels=1,
        band_roles=bands,
        sensor="SAR" if in_channels == 4 else "EO",
        scaling={"method": "db", "input_units": "db", "clip_db": [-30.0, 10.0]}
        if in_channels == 4
        else {"method": "percentile", "low": 2, "high": 98},
        gsd_m=0.5,
        tile_size=512,
        overlap=64,
        threshold=0.5,
        tta="none",
        description=f"SpaceNet 6 baseline (TernausNet UNet11) imported from {Path(weights_file).name}. "
        "Check that your SAR rasters match its bands and scaling before relying on it.",
        training_data=[{"name": "SpaceNet 6 (Capella SAR, Rotterdam)", "licence": "CC BY-SA 4.0"}],
        licence="CC BY-SA 4.0 (SpaceNet 6 data); see the baseline's licence",
    )
    card_path = save_model(model, card, user_model_dir())
    from ..core.modelcard import load_card

    return load_card(card_path)


def delete_user_model(card: Any) -> None:
    """Remove a user model's card and weights; bundled models are read-only."""
    from ..core.errors import ModelError

    if card.bundled or card.path is None:
        raise ModelError(f"'{card.name}' is bundled with the plugin and cannot be deleted.")
    weights = card.path.parent / card.weights_file if card.weights_file else None
    card.path.unlink(missing_ok=True)
    if weights is not None and weights.is_file():
        weights.unlink()


class ModelManagerDialog(QDialog):
    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("Building Footprints: models"))
        self.resize(760, 480)
        self.cards: list = []
        layout = QVBoxLayout(self)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        self.model_list = QListWidget()
        self.card_view = QTextBrowser()
        self.card_view.setOpenExternalLinks(True)
        splitter.addWidget(self.model_list)
        splitter.addWidget(self.card_view)
        splitter.setStretchFactor(1, 2)
        layout.addWidget(splitter, 1)
        self.folder_label = QLabel()
        self.folder_label.setWordWrap(True)
        layout.addWidget(self.folder_label)
        row = QHBoxLayout()
        self.import_button = QPushButton(self.tr("Import model (card + weights)…"))
        self.import_spacenet_button = QPushButton(self.tr("Import SpaceNet 6 baseline (.pth)…"))
        self.delete_button = QPushButton(self.tr("Delete"))
        self.folder_button = QPushButton(self.tr("Open folder"))
        for button in (self.import_button, self.import_spacenet_button, self.delete_button, self.folder_button):
            row.addWidget(button)
        layout.addLayout(row)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout.addWidget(buttons)
        self.model_list.currentRowChanged.connect(self._show_card)
        self.import_button.clicked.connect(self._import_card)
        self.import_spacenet_button.clicked.connect(self._import_spacenet)
        self.delete_button.clicked.connect(self._delete)
        self.folder_button.clicked.connect(self._open_folder)
        self.refresh()

    def refresh(self, select: Optional[str] = None) -> None:
        from ..core.modelcard import list_models, user_model_dir

        self.cards = list_models()
        self.model_list.clear()
        for card in self.cards:
            item = QListWidgetItem(card.display_name + (self.tr("  [bundled]") if card.bundled else self.tr("  [user]")))
            item.setData(Qt.ItemDataRole.UserRole, card.name)
            self.model_list.addItem(item)
        self.folder_label.setText(self.tr("User models are stored in {}").format(user_model_dir()))
        names = [card.name for card in self.cards]
        self.model_list.setCurrentRow(names.index(select) if select in names else (0 if names else -1))
        self._show_card(self.model_list.currentRow())

    def selected_card(self) -> Any:
        row = self.model_list.currentRow()
        return self.cards[row] if 0 <= row < len(self.cards) else None

    def _show_card(self, _row: int) -> None:
        card = self.selected_card()
        self.card_view.setHtml(card_html(card) if card else self.tr("<p>No models installed yet.</p>"))
        self.delete_button.setEnabled(card is not None and not card.bundled)

    def _error(self, exc: Exception) -> None:
        QMessageBox.warning(self, self.windowTitle(), str(exc))

    def _import_card(self) -> None:
        from ..core.errors import FootprintError

        card_file, _ = QFileDialog.getOpenFileName(self, self.tr("Model card"), "", "Model card (*.json)")
        if not card_file:
            return
        try:
            card = import_card_and_weights(Path(card_file))
        except FootprintError as exc:
            self._error(exc)
            return
        self.refresh(select=card.name)

    def _import_spacenet(self) -> None:
        from ..core.errors import FootprintError

        weights, _ = QFileDialog.getOpenFileName(self, self.tr("SpaceNet 6 baseline weights"), "", "PyTorch weights (*.pth *.pt)")
        if not weights:
            return
        name, ok = QInputDialog.getText(self, self.windowTitle(), self.tr("Name for the imported model:"), text=Path(weights).stem)
        if not ok or not name.strip():
            return
        try:
            card = import_spacenet6_baseline(Path(weights), name.strip())
        except FootprintError as exc:
            self._error(exc)
            return
        self.refresh(select=card.name)

    def _delete(self) -> None:
        from ..core.errors import FootprintError

        card = self.selected_card()
        if card is None:
            return
        answer = QMessageBox.question(self, self.windowTitle(), self.tr("Delete the user model '{}'?").format(card.name))
        if answer != QMessageBox.StandardButton.Yes:
            return
        try:
            delete_user_model(card)
        except FootprintError as exc:
            self._error(exc)
        self.refresh()

    def _open_folder(self) -> None:
        from ..core.modelcard import user_model_dir

        folder = user_model_dir()
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
