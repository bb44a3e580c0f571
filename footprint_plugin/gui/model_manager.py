"""Model manager: list bundled and user models, show their cards, import and delete user models."""

from __future__ import annotations

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
    """Copy a card (and its weights) into the user model folder after checking them (core.zoo.modelcard.import_model)."""
    from ..core.zoo.modelcard import import_model

    return import_model(Path(card_file), weights_file)


def import_spacenet6_baseline(weights_file: Path, name: str) -> Any:
    """Wrap a SpaceNet 6 baseline checkpoint in a model card (core.zoo.import_spacenet6_baseline)."""
    from ..core.zoo.weights import import_spacenet6_baseline as core_import

    return core_import(weights_file, name)


def delete_user_model(card: Any) -> None:
    """Remove a user model's card and weights, never anything outside its folder (core.zoo.modelcard.delete_model)."""
    from ..core.zoo.modelcard import delete_model

    delete_model(card)


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
        splitter.setChildrenCollapsible(False)  # resizable, but neither pane can vanish
        self.splitter = splitter
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
        from ..core.zoo.modelcard import scan_models, user_model_dir

        self.cards, problems = scan_models()
        self.model_list.clear()
        for card in self.cards:
            item = QListWidgetItem(
                card.display_name + (self.tr("  [bundled]") if card.bundled else self.tr("  [user]"))
            )
            item.setData(Qt.ItemDataRole.UserRole, card.name)
            item.setToolTip(f"{card.display_name} ({card.sensor}, {card.in_channels} band(s))")
            self.model_list.addItem(item)
        self._fit_names()
        text = self.tr("User models are stored in {}").format(user_model_dir())
        if problems:
            # A skipped card is shown, never silently dropped: the user sees which file and which field.
            text += "\n" + "\n".join(self.tr("Warning: {}").format(problem) for problem in problems)
        self.folder_label.setText(text)
        names = [card.name for card in self.cards]
        self.model_list.setCurrentRow(names.index(select) if select in names else (0 if names else -1))
        self._show_card(self.model_list.currentRow())

    def _fit_names(self) -> None:
        """The list pane is never narrower than its longest name (the splitter gives the rest to the card)."""
        widest = self.model_list.sizeHintForColumn(0) if self.model_list.count() else 0
        frame = 2 * self.model_list.frameWidth() + self.model_list.verticalScrollBar().sizeHint().width() + 8
        self.model_list.setMinimumWidth(widest + frame)
        total = sum(self.splitter.sizes()) or self.width()
        self.splitter.setSizes([widest + frame, max(total - widest - frame, 200)])

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
        from ..core.common.errors import FootprintError

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
        from ..core.common.errors import FootprintError

        weights, _ = QFileDialog.getOpenFileName(
            self, self.tr("SpaceNet 6 baseline weights"), "", "PyTorch weights (*.pth *.pt)"
        )
        if not weights:
            return
        name, ok = QInputDialog.getText(
            self, self.windowTitle(), self.tr("Name for the imported model:"), text=Path(weights).stem
        )
        if not ok or not name.strip():
            return
        try:
            card = import_spacenet6_baseline(Path(weights), name.strip())
        except FootprintError as exc:
            self._error(exc)
            return
        self.refresh(select=card.name)

    def _delete(self) -> None:
        from ..core.common.errors import FootprintError

        card = self.selected_card()
        if card is None:
            return
        answer = QMessageBox.question(
            self, self.windowTitle(), self.tr("Delete the user model '{}'?").format(card.name)
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        try:
            delete_user_model(card)
        except FootprintError as exc:
            self._error(exc)
        self.refresh()

    def _open_folder(self) -> None:
        from ..core.zoo.modelcard import user_model_dir

        folder = user_model_dir()
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
