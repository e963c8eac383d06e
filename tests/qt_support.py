"""QGIS-side test helpers: waiting with Qt's events processed while a condition is awaited (queued signals,
QgsTask results and network replies are delivered only then), a real authentication configuration, and a
Processing feedback that keeps what an algorithm says."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from qgis.core import QgsApplication, QgsAuthMethodConfig, QgsProcessingFeedback
from qgis.PyQt.QtCore import QCoreApplication


def wait_for(predicate, seconds: float = 30.0) -> bool:
    """Process Qt events until `predicate()` is true; its last value (False after `seconds`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


@contextmanager
def api_header_config(folder: Path, name: str, header: str):
    """A real `QgsAuthManager` configuration of the "API header" method sending `Authorization: <header>`;
    the auth database is set up in `folder` (with a master password) when QGIS has none yet. Yields its id;
    the configuration is removed afterwards."""
    manager = QgsApplication.authManager()
    if not manager.masterPasswordIsSet():
        manager.setup(QgsApplication.pluginPath(), str(folder / "qgis-auth.db"))
        assert manager.setMasterPassword("geovlm-test", True)
    config = QgsAuthMethodConfig("APIHeader")
    config.setName(name)
    config.setConfig("Authorization", header)
    ok, stored = manager.storeAuthenticationConfig(config)
    assert ok
    try:
        yield stored.id()
    finally:
        manager.removeAuthenticationConfig(stored.id())


class RecordingFeedback(QgsProcessingFeedback):
    """A feedback that keeps what an algorithm logs: info, warnings, errors, progress texts and console lines."""

    def __init__(self):
        super().__init__()
        self.info, self.warnings, self.errors, self.texts, self.console = [], [], [], [], []

    def pushInfo(self, info):  # noqa: N802 (QGIS's name)
        self.info.append(info)

    def pushWarning(self, warning):  # noqa: N802
        self.warnings.append(warning)

    def reportError(self, error, fatal=False):  # noqa: N802
        self.errors.append(error)

    def setProgressText(self, text):  # noqa: N802
        self.texts.append(text)

    def pushConsoleInfo(self, info):  # noqa: N802
        self.console.append(info)
