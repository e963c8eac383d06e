"""The manual end-to-end check of "Set up the local engine…", run by `scripts/engine_setup_e2e.sh` as
`qgis --code` in a real QGIS (under Xvfb) with a temporary profile: it drives the plugin as a user does (its menu
action, the dialog's buttons, the Ask dock's Send button) and writes `report-<PHASE>.json`, the dialog's log and
screenshots into E2E_OUT, then quits QGIS. PHASE (environment): install, ask, repair, remove, cancel (cancelled
while pip collects the engine's packages, then Repair), offline ("Set up again" with the dialog closed; the
runner makes pip's index unreachable) or askrepair (a question, Repair while the engine runs, a second question).
It downloads nothing itself; the set-up's pip does (about 500 MB). Not a test: minutes long and network-bound.
"""
import json
import os
import shutil
import subprocess  # nosec B404  # ImageMagick's `import` and `du`, fixed argument lists
import time
import traceback
from pathlib import Path

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication, QTimer
from qgis.PyQt.QtGui import QAction
from qgis.PyQt.QtWidgets import QApplication, QLabel, QTextEdit
from qgis.utils import iface, plugins

OUT = Path(os.environ.get("E2E_OUT", "e2e-out"))
PHASE = os.environ.get("PHASE", "install")
RASTER = os.environ.get("E2E_RASTER", "")  # the runner names it (`qgis --code` gives the script no __file__)
SHOT_EVERY_S = float(os.environ.get("SHOT_EVERY", "30"))
report = {"phase": PHASE}


def note(key, value):
    report[key] = value
    (OUT / f"report-{PHASE}.json").write_text(json.dumps(report, indent=1))
    print(f"[e2e] {key}: {value}", flush=True)


def wait_for(condition, timeout_s, shot=None):
    """Pump QGIS's events until `condition()` or `timeout_s`; `shot(n)` every SHOT_EVERY_S seconds meanwhile."""
    start = last = time.monotonic()
    taken = 0
    while time.monotonic() - start < timeout_s:
        QCoreApplication.processEvents()
        if condition():
            return True
        if shot is not None and time.monotonic() - last > SHOT_EVERY_S:
            last, taken = time.monotonic(), taken + 1
            shot(taken)
        time.sleep(0.05)
    return False


def screen(name):
    subprocess.run(["import", "-window", "root", str(OUT / f"{name}.png")], check=False)  # nosec B603 B607


def grab(widget, name):
    widget.grab().save(str(OUT / f"{name}.png"), "PNG")


def megabytes(path):
    done = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True)  # nosec B603 B607
    return int(done.stdout.split()[0]) if done.returncode == 0 else None


def trigger(text):
    for action in iface.mainWindow().findChildren(QAction):
        if action.text() == text:
            action.trigger()
            return
    raise RuntimeError(f"no menu entry {text!r}")


def open_dialog():
    from geovlm.ui.engine_setup_dialog import EngineSetupDialog

    trigger("Set up the local engine…")
    wait_for(lambda: False, 1)
    [dialog] = [w for w in QApplication.topLevelWidgets() if isinstance(w, EngineSetupDialog) and w.isVisible()]
    wait_for(lambda: dialog._finder is None, 120)  # the Python search
    return dialog


def press(dialog, button, tag, cancel_when=None):
    """Click `button`, wait for the set-up task to end (cancelling it once `cancel_when(log text)`), record."""
    start = time.monotonic()
    button.click()
    cancelled = False

    def ended():
        nonlocal cancelled
        if cancel_when and not cancelled and cancel_when(dialog.log.toPlainText()):
            grab(dialog, f"{tag}-before-cancel")
            dialog.cancel_button.click()
            note(f"{tag}_cancelled_after_s", round(time.monotonic() - start, 1))
            cancelled = True
        return dialog.task is None

    note(f"{tag}_finished", wait_for(ended, 3600, lambda n: grab(dialog, f"{tag}-progress-{n}")))
    note(f"{tag}_seconds", round(time.monotonic() - start, 1))
    wait_for(lambda: False, 1)
    (OUT / f"{tag}-dialog.log").write_text(dialog.log.toPlainText())
    note(f"{tag}_message", dialog.step.text())
    note(f"{tag}_state", dialog.state.text())
    grab(dialog, f"{tag}-done")


def record_venv(tag):
    from geovlm.plugin import settings as engine_settings

    venv = engine_settings.venv_dir()
    note(f"{tag}_venv_mb", megabytes(venv) if venv.exists() else None)
    note(f"{tag}_engine_python", engine_settings.engine_python())


def setup_phase(action):
    dialog = open_dialog()
    note("python_found", dialog.python.filePath())
    note("state_before", dialog.state.text())
    grab(dialog, f"{action}-opened")
    if action == "cancel":
        press(dialog, dialog.setup_button, "cancel",
              cancel_when=lambda text: "Collecting" in text.partition("== Installing the engine")[2])
        record_venv("cancel")
        action = "repair-after-cancel"
        press(dialog, dialog.repair_button, action)
    else:
        button = {"install": dialog.setup_button, "repair": dialog.repair_button, "remove": dialog.remove_button}
        press(dialog, button[action], action)
    record_venv(action)
    dialog.close()


def offline_phase():
    dialog = open_dialog()
    note("state_before", dialog.state.text())
    start = time.monotonic()
    dialog.setup_button.click()
    wait_for(lambda: False, 1)
    dialog.close()  # the set-up goes on in QGIS's task manager; the message bar says how it ended
    note("offline_finished", wait_for(lambda: dialog.task is None, 900))
    note("offline_seconds", round(time.monotonic() - start, 1))
    wait_for(lambda: False, 2)
    screen("offline-screen")
    (OUT / "offline-dialog.log").write_text(dialog.log.toPlainText())
    note("offline_message", dialog.step.text())
    note("state_after", dialog.state.text())
    record_venv("offline")


def ask(question, tag):
    """Ask the Ask dock `question` about the visible map (RASTER), as a user does with Send."""
    from geovlm.plugin.engine_manager import engine_manager

    if plugins["geovlm"].ask is None:
        layer = QgsRasterLayer(RASTER, Path(RASTER).stem)
        if not layer.isValid():
            raise RuntimeError(f"cannot open {RASTER}")
        QgsProject.instance().addMapLayer(layer)
        iface.mapCanvas().setExtent(layer.extent())
        iface.mapCanvas().refresh()
        trigger("Ask the map…")
        wait_for(lambda: False, 2)
    session = plugins["geovlm"].ask
    note(f"{tag}_engine_before", session.dock.findChildren(QLabel)[0].text())
    session.dock.question.setPlainText(question)
    start = time.monotonic()
    session.dock.send.click()
    wait_for(lambda: False, 0.5)
    note(f"{tag}_finished", wait_for(lambda: not session.busy(), 1800))
    note(f"{tag}_seconds", round(time.monotonic() - start, 1))
    wait_for(lambda: False, 2)
    screen(f"{tag}-screen")
    note(f"{tag}_conversation", [w.toPlainText() for w in session.dock.findChildren(QTextEdit)])
    manager = engine_manager()
    note(f"{tag}_engine", [manager.state, manager.detail, manager.engine.pid if manager.engine else None])
    if manager.engine is not None and manager.engine.log_path and manager.engine.log_path.exists():
        shutil.copy(manager.engine.log_path, OUT / f"{tag}-engine.log")


def askrepair_phase():
    from geovlm.plugin.engine_manager import engine_manager

    ask("Describe the image and locate what you name.", "ask-first")
    first = engine_manager().engine.pid
    dialog = open_dialog()
    press(dialog, dialog.repair_button, "repair-while-running")
    note("first_engine_gone", not Path(f"/proc/{first}").exists())
    dialog.close()
    ask("What is in the image?", "ask-again")


def main():
    try:
        OUT.mkdir(parents=True, exist_ok=True)
        if PHASE in ("install", "repair", "remove", "cancel"):
            setup_phase(PHASE)
        elif PHASE == "ask":
            ask("Describe the image and locate what you name.", "ask")
        elif PHASE == "offline":
            offline_phase()
        elif PHASE == "askrepair":
            askrepair_phase()
        else:
            raise RuntimeError(f"unknown PHASE {PHASE!r}")
        note("result", "ok")
    except Exception:  # recorded for the runner, which prints it
        note("error", traceback.format_exc())
        screen(f"{PHASE}-error")
    finally:
        QgsProject.instance().clear()  # no "temporary layers" question on exit
        iface.actionExit().trigger()  # unloads the plugin: it stops the engine
        QTimer.singleShot(3000, QgsApplication.instance().quit)


def log_message(message, tag, level):
    with open(OUT / "messagelog.txt", "a", encoding="utf-8") as out:
        out.write(f"{time.strftime('%H:%M:%S')} [{tag}] {int(level)} {message}\n")


OUT.mkdir(parents=True, exist_ok=True)
QgsApplication.messageLog().messageReceived.connect(log_message)
QTimer.singleShot(4000, main)
