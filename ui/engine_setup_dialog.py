""""Set up the local engine…": the dialog around `plugin.engine_setup.EngineSetupTask`.

It shows where the engine's venv goes and what state it is in (`engine_setup.setup_text`: the words the Options
page says too), finds a system Python (in a task, so the GUI never waits on it) or lets the user pick one, picks
the CPU or GPU onnxruntime by what the machine has (the user can override) and lets the user pick torch's build
(automatic, CPU or CUDA; remembered in QgsSettings: automatic takes the CPU build, from PyTorch's CPU index on
Linux, else from pip's configured sources, when no NVIDIA GPU is found), notes (without blocking) a pick that
puts onnxruntime and torch on different devices (`engine_setup.mismatch_note`), and runs set-up, repair or
removal as a `QgsTask`: the progress and every line of pip's output appear as they come (the newest in sight
unless the user scrolled up), the state reads what runs meanwhile, Cancel stops the
running command (and reads as cancelled, not failed); Remove asks first, naming what it deletes (the venv and
numba's kernel cache: `engine_files`) and its size. A set-up started from another set-up dialog reads as running
here too, and none starts beside it. Closing the dialog leaves a running task to the task
manager (its progress stays in QGIS's status bar; QGIS's message bar says how it ended).
"""
from __future__ import annotations

from qgis.core import Qgis, QgsApplication, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from ..plugin import engine_files, engine_setup
from ..plugin import settings as engine_settings
from ..plugin.engine_manager import engine_manager

MAX_LOG_LINES = 5000


class EngineSetupDialog(QDialog):
    """Set up, repair or remove the local engine's venv; `task` is the running `EngineSetupTask` or None."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Set up the local GeoVLM engine")
        self.task = None
        self._finder = None
        layout = QVBoxLayout(self)
        intro = QLabel(
            "The engine runs the models in its own Python environment, outside QGIS: this makes it once "
            "(torch, transformers and onnxruntime are downloaded: about 500 MB with torch's CPU build, which "
            "take about 2 GB on disk; several GB with its CUDA build). Without a model folder the "
            "engine serves the demo model, a random stand-in whose answers are noise."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.folder = QLabel(str(engine_settings.venv_dir()))
        self.folder.setWordWrap(True)
        form.addRow("Environment", self.folder)
        self.state = QLabel()
        form.addRow("State", self.state)
        self.python = QgsFileWidget()
        self.python.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.python.setDialogTitle("A Python 3.10 or newer (not QGIS's own)")
        form.addRow("System Python", self.python)
        self.runtime = QComboBox()
        self.runtime.addItem("CPU onnxruntime", "cpu")
        self.runtime.addItem("GPU onnxruntime (CUDA)", "gpu")
        form.addRow("Runtime", self.runtime)
        self.torch = QComboBox()
        self.torch.addItem("Automatic (CUDA with an NVIDIA GPU, else CPU)", "auto")
        self.torch.addItem("CPU build", "cpu")
        self.torch.addItem("CUDA build (NVIDIA GPU)", "cuda")
        self.torch.setCurrentIndex(self.torch.findData(engine_settings.torch_build()))
        self.torch.currentIndexChanged.connect(lambda _: engine_settings.set_torch_build(self.torch.currentData()))
        form.addRow("torch", self.torch)
        layout.addLayout(form)
        self.mismatch = QLabel()  # one line when onnxruntime and torch would run on different devices
        self.mismatch.setWordWrap(True)
        self.mismatch.setVisible(False)
        layout.addWidget(self.mismatch)
        self._gpu = None  # whether the machine has an NVIDIA GPU: known once the search task is done
        self.runtime.currentIndexChanged.connect(lambda _: self.update_mismatch())
        self.torch.currentIndexChanged.connect(lambda _: self.update_mismatch())
        self.progress = QProgressBar()
        self._progress_before_end = 0
        self.progress.setRange(0, 100)
        layout.addWidget(self.progress)
        self.step = QLabel()
        self.step.setWordWrap(True)  # a step names the venv's path: it must not widen the dialog
        layout.addWidget(self.step)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(MAX_LOG_LINES)
        self._follow = True  # the log shows its newest line (until the user scrolls up; see `append`)
        bar = self.log.verticalScrollBar()
        bar.valueChanged.connect(lambda value: setattr(self, "_follow", value >= bar.maximum()))
        bar.rangeChanged.connect(lambda _low, high: bar.setValue(high) if self._follow else None)
        layout.addWidget(self.log, 1)
        buttons = QDialogButtonBox()
        self.setup_button = QPushButton("Set up")
        self.repair_button = QPushButton("Repair")
        self.remove_button = QPushButton("Remove")
        self.cancel_button = QPushButton("Cancel")
        for button in (self.setup_button, self.repair_button, self.remove_button, self.cancel_button):
            buttons.addButton(button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        self.setup_button.clicked.connect(lambda: self.start("install"))
        self.repair_button.clicked.connect(lambda: self.start("repair"))
        self.remove_button.clicked.connect(self.remove)
        self.cancel_button.clicked.connect(self.cancel)
        layout.addWidget(buttons)
        self.resize(720, 520)
        self._find_python()
        engine_manager().stateChanged.connect(self.update_state)
        self.update_state()

    # ------------------------------------------------------------ state

    def update_state(self, *_) -> None:
        """The state line and buttons; also called on the engine manager's `stateChanged`, which a set-up task
        tells when it starts and ends: a set-up started from another set-up dialog (the menu's and the Options
        page's) reads as running here too, and none can be started beside it."""
        state, _ = engine_setup.setup_state()
        running = self.task is not None
        elsewhere = engine_setup.running_text() if not running else ""
        # the words the Options page and the Ask dock show too; while a task runs, what it does (the old
        # words would be stale: "Set up again" removes the old venv first)
        self.state.setText(engine_setup.RUNNING_WORDS[self.task.plan.action] if running else
                           elsewhere or engine_setup.setup_text())
        running = running or bool(elsewhere)
        self.setup_button.setEnabled(not running)
        self.setup_button.setText("Set up again" if state != "missing" else "Set up")
        self.repair_button.setEnabled(not running and state != "missing")
        self.remove_button.setEnabled(not running and state != "missing")
        self.cancel_button.setEnabled(running)

    def update_mismatch(self) -> None:
        """Show `engine_setup.mismatch_note` for the picked runtime and torch build (hidden when consistent)."""
        note = engine_setup.mismatch_note(self.runtime.currentData(), self.torch.currentData(), self._gpu)
        self.mismatch.setText(note)
        self.mismatch.setVisible(bool(note))

    def _find_python(self) -> None:
        """Find a system Python and the GPU in a task; fill the fields when it is done."""
        def find(_task):
            return engine_setup.find_system_python(), engine_setup.has_nvidia_gpu()

        def found(exception, result=None):
            self._finder = None
            if exception is not None or result is None:
                return
            python, gpu = result
            try:
                self._gpu = gpu
                if not self.python.filePath():
                    self.python.setFilePath(python)
                    if not python:
                        self.append("No Python 3.10 or newer on PATH: pick one (python.org, your package manager).")
                self.runtime.setCurrentIndex(self.runtime.findData(engine_setup.default_runtime(gpu)))
                self.update_mismatch()
            except RuntimeError:  # the dialog was closed meanwhile
                pass

        self._finder = QgsTask.fromFunction("GeoVLM: looking for Python", find, on_finished=found)
        QgsApplication.taskManager().addTask(self._finder)

    # ------------------------------------------------------------ the task

    def start(self, action: str) -> None:
        plan = engine_setup.SetupPlan(action=action, python=self.python.filePath().strip(),
                                      runtime=self.runtime.currentData(), torch=self.torch.currentData())
        if action == "install" and not plan.python:
            self.append("Pick a Python 3.10 or newer first.")
            return
        self.log.clear()
        self._follow = True
        self.progress.setValue(0)
        self._progress_before_end = 0
        task = engine_setup.EngineSetupTask(plan)
        task.logLine.connect(self.append)
        task.stepStarted.connect(self.step.setText)
        task.progressChanged.connect(self._progressed)
        task.done.connect(self._done)
        self.task = task
        QgsApplication.taskManager().addTask(task)
        self.update_state()

    def remove(self) -> None:
        """Ask first, naming each folder *Remove* deletes (`SetupPlan.removes`: the venv, a venv kept aside, numba's
        kernels compiled from it) and each it keeps because other GeoVLM installs share it (`SetupPlan.keeps`:
        encoders, hashes, their kernels), with sizes; the removal starts only on Yes."""
        plan = engine_setup.SetupPlan(action="remove")
        kept = plan.keeps()
        text = ("Remove the local engine? This deletes:\n\n" + engine_files.describe(plan.removes()) +
                "\n\nSet up makes it again (a download of about 500 MB). The settings, the set-up log and your "
                "answers stay.")
        if kept:
            text += ("\n\nGeoVLM's cache folder is shared by every GeoVLM on this machine (a command-line install "
                     "uses it too), so these stay (delete them by hand if no other GeoVLM needs them):\n\n"
                     + engine_files.describe(kept))
        answer = QMessageBox.question(self, "Remove the local engine", text,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Cancel)
        if answer == QMessageBox.StandardButton.Yes:
            self.start("remove")

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def shutdown(self) -> None:
        """Plugin unload: cancel the running set-up (its command is terminated) and the Python search."""
        for task in (self.task, self._finder):
            if task is not None:
                try:
                    task.cancel()
                except RuntimeError:  # already finished and deleted by the task manager
                    pass
        if self.task is not None:
            for signal in (self.task.logLine, self.task.stepStarted, self.task.progressChanged, self.task.done):
                signal.disconnect()
        self.task = self._finder = None
        try:
            engine_manager().stateChanged.disconnect(self.update_state)
        except TypeError:  # not connected
            pass

    def append(self, line: str) -> None:
        """Add one line of output. The view keeps the newest line in sight until the user scrolls up, and again
        once they scroll back to the end (the scroll bar's range and value signals): QPlainTextEdit's own
        following stops for good once its last line overhangs the view by a fraction of a pixel (seen with
        QGIS's fonts under Xvfb), which left pip's output and the final "Done:" out of sight."""
        follow = self._follow
        self.log.appendPlainText(line)
        if follow:
            bar = self.log.verticalScrollBar()
            bar.setValue(bar.maximum())

    def _progressed(self, value: float) -> None:
        # QGIS's task manager reports 100 % for any task that ends completed, a cancelled set-up included: the
        # bar keeps the last value the set-up itself reached, shown again if it stopped
        if value < 100:
            self._progress_before_end = int(value)
        self.progress.setValue(int(value))

    def _done(self, ok: bool, message: str) -> None:
        cancelled, self.task = self.task is not None and self.task.cancelled, None
        if not self.isVisible():  # closed while it ran: QGIS's message bar says how it ended (and why)
            from qgis.utils import iface

            level = (Qgis.MessageLevel.Success if ok else Qgis.MessageLevel.Info if cancelled else
                     Qgis.MessageLevel.Warning)
            if iface is not None:  # after QGIS's own "Task complete/failed" notice, so that it shows on top
                QTimer.singleShot(0, lambda: iface.messageBar().pushMessage(
                    "GeoVLM engine set-up", message, level, 0 if level == Qgis.MessageLevel.Warning else 10))
        self.step.setText(message)
        self.append(("Done: " if ok else "Stopped: ") + message)
        self.progress.setValue(100 if ok else self._progress_before_end)
        self.update_state()
