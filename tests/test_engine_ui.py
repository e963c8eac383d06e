"""The engine's GUI: GeoVLM's Options page reads and stores the settings (endpoints with their authcfg, the
local engine, the rendering size), the plugin registers and unregisters it, and the set-up dialog finds a
Python and removes a set-up engine through its task."""
import json

import pytest
from qgis.core import Qgis, QgsSettings, QgsTask
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtWidgets import QMessageBox
from qt_support import api_header_config, wait_for

import geovlm
from geovlm.plugin import engine_setup
from geovlm.plugin import settings as engine_settings
from geovlm.ui.engine_setup_dialog import EngineSetupDialog
from geovlm.ui.options_page import GeoVlmOptionsFactory, GeoVlmOptionsPage

pytestmark = pytest.mark.usefixtures("geovlm_settings")


@pytest.fixture(scope="module")
def auth_id(qgis_app, tmp_path_factory):
    """A real API-header configuration in a temporary auth database."""
    with api_header_config(tmp_path_factory.mktemp("auth"), "GeoVLM options test", "Bearer k") as found:
        yield found


def test_the_options_page_round_trips_the_settings(auth_id):
    stored = engine_settings.EngineSettings(
        mode="remote", family="earthdial", request_timeout_s=90, start_timeout_s=120,
        endpoints=[engine_settings.Endpoint("http://127.0.0.1:8000", auth_id),
                   engine_settings.Endpoint("https://gpu.example.org"),
                   engine_settings.Endpoint("https://b.example.org", "unknown")],
        render_width=800, render_height=600, render_dpr=2.0, render_from_canvas=False,
    )
    engine_settings.save(stored)
    page = GeoVlmOptionsFactory().createWidget(None)
    assert isinstance(page, GeoVlmOptionsPage)
    assert page.remote_radio.isChecked() and page.endpoints.rowCount() == 3
    assert page.endpoints.cellWidget(0, 1).configId() == auth_id
    assert page.current() == stored  # what it shows is what is stored, an id QGIS does not know included
    page.endpoints.cellWidget(1, 1).setConfigId(auth_id)  # the user picks a configuration
    page.endpoints.selectRow(2)
    page.endpoints.remove_selected()

    page.endpoints.add("ftp://nope")  # refused, logged, the others kept
    page.endpoints.add("http://127.0.0.1:9000/")
    page.local_radio.setChecked(True)
    page.model_dir.setFilePath("/models/geochat-7b")
    page.family.setCurrentIndex(0)  # read from the engine
    page.from_canvas.setChecked(True)
    page.apply()
    loaded = engine_settings.load()
    assert loaded.mode == "local" and loaded.family == "" and loaded.model_dir == "/models/geochat-7b"
    assert [(e.url, e.authcfg) for e in loaded.endpoints] == [
        ("http://127.0.0.1:8000", auth_id), ("https://gpu.example.org", auth_id), ("http://127.0.0.1:9000/", "")]
    assert loaded.render_from_canvas and (loaded.render_width, loaded.render_dpr) == (800, 2.0)
    page.deleteLater()


def test_unreadable_settings_fall_back_to_defaults(qgis_app):
    s = QgsSettings()
    s.setValue(engine_settings.KEY_MODE, "sideways")
    s.setValue(engine_settings.KEY_ENDPOINTS, "{not json")
    s.setValue(engine_settings.KEY_RENDER_WIDTH, "-3")
    assert engine_settings.load() == engine_settings.EngineSettings()
    with pytest.raises(ValueError, match="http://host:port"):
        engine_settings.save(engine_settings.EngineSettings(endpoints=[engine_settings.Endpoint("gopher://x")]))


def test_the_plugin_registers_and_unregisters_its_options_page(qgis_iface, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: tmp_path / "engine-venv")
    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path)
    qgis_iface.registerOptionsWidgetFactory.reset_mock()
    qgis_iface.unregisterOptionsWidgetFactory.reset_mock()
    menus = []  # QGIS puts what addPluginToMenu adds under its Plugins menu
    monkeypatch.setattr(qgis_iface, "addPluginToMenu", lambda name, action: menus.append((name, action)))
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initGui()
    [(factory,), _] = qgis_iface.registerOptionsWidgetFactory.call_args
    assert isinstance(factory, GeoVlmOptionsFactory) and factory.title() == "GeoVLM"
    assert plugin.engine_ui.action.text() == "Set up the local engine…"
    # Messages name the menu path as QGIS shows it: addPluginToMenu's entries are under Plugins.
    [(menu, action)] = [(name, a) for name, a in menus if a is plugin.engine_ui.action]
    assert engine_settings.SETUP_MENU_PATH == f"Plugins ▸ {menu.replace('&', '')} ▸ {action.text()}"
    assert engine_settings.OPTIONS_PATH == f"Settings ▸ Options ▸ {factory.title()}"
    plugin.engine_ui.open_setup()
    dialog = plugin.engine_ui.dialog
    assert dialog.isVisible()
    dialog.python.setFilePath(engine_setup.find_system_python())
    dialog.start("install")  # unloading during a set-up cancels it
    task = dialog.task
    assert wait_for(lambda: task.status() == QgsTask.TaskStatus.Running, 10)
    ended = []
    task.taskTerminated.connect(lambda: ended.append("terminated"))
    task.taskCompleted.connect(lambda: ended.append("completed"))
    plugin.unload()
    qgis_iface.unregisterOptionsWidgetFactory.assert_called_once_with(factory)
    assert plugin.engine_ui is None and dialog.task is None
    assert wait_for(lambda: ended, 10) and ended == ["completed"]  # a cancel is no failed task
    assert engine_setup.setup_state()[0] in ("missing", "incomplete")


def engine_venv_with_python(tmp_path, monkeypatch):
    """The engine's venv folder moved under `tmp_path` (GeoVLM's data folder too, its cache folder and the system's
    temporary folder: a removal never touches the real numba caches), holding an (empty) Python."""
    import tempfile

    venv = tmp_path / "engine-venv"
    monkeypatch.setenv("GEOVLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: venv)
    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path)
    python = engine_settings.venv_python(venv)
    python.parent.mkdir(parents=True)
    python.write_text("")
    return venv


def test_the_setup_dialog_finds_python_and_removes_the_engine(qgis_app, tmp_path, monkeypatch):
    venv = engine_venv_with_python(tmp_path, monkeypatch)
    (venv / engine_setup.MARKER).write_text(json.dumps({"version": geovlm.__version__, "runtime": "cpu"}))
    dialog = EngineSetupDialog()
    assert dialog.state.text().startswith("set up (CPU onnxruntime")
    assert wait_for(lambda: dialog.python.filePath() != "")  # found in a task
    assert not engine_setup.check_python(dialog.python.filePath())
    monkeypatch.setattr(QMessageBox, "question", lambda *_: QMessageBox.StandardButton.Yes)
    dialog.remove_button.click()
    assert dialog.task is not None and not dialog.setup_button.isEnabled()
    assert dialog.state.text() == "being removed…"  # not the old state's words while it runs
    assert wait_for(lambda: dialog.task is None)
    assert not venv.exists() and dialog.state.text() == "not set up"
    assert any(f"Removing {venv}" in line for line in dialog.log.toPlainText().splitlines())
    assert dialog.progress.value() == 100 and not dialog.remove_button.isEnabled()
    dialog.deleteLater()


def kernels_of(root, source, size=5000):
    """A numba cache subfolder under `root` as the engine leaves it: numba's index of the decode step (`size`
    bytes) and GeoVLM's compile marker naming `source`. Returns the subfolder."""
    from geovlm.core.cache_paths import KERNEL_MARKER_PREFIX

    folder = root / f"models_{abs(hash(str(source))):040d}"[:48]
    folder.mkdir(parents=True)
    (folder / "cpu_decode_step._decode-212.py310.nbi").write_bytes(b"k" * size)
    (folder / f"{KERNEL_MARKER_PREFIX}0.61.0-100-1.done").write_text(str(source))
    return folder


def engine_leftovers(tmp_path, monkeypatch):
    """A set-up engine with all it leaves on disk (venv, a venv kept aside, numba's kernels compiled from their code
    in GeoVLM's cache folder and in its temporary fallback), a symbolic link inside each pointing out of it, and
    the files beside them that are not only the engine's: the set-up log, answers, the encoders and hashes a
    command-line GeoVLM shares, its kernels, and a NUMBA_CACHE_DIR of the user's. Returns (engine folders, files
    that must stay)."""
    from geovlm.core.cache_paths import numba_cache_dir, numba_temp_dir

    venv = engine_venv_with_python(tmp_path, monkeypatch)
    (venv / engine_setup.MARKER).write_text(json.dumps({"version": geovlm.__version__, "runtime": "cpu"}))
    (venv / "lib").mkdir()
    (venv / "lib" / "torch.so").write_bytes(b"t" * 300_000)
    previous = venv.with_name(venv.name + engine_setup.PREVIOUS_SUFFIX)
    previous.mkdir()
    assert numba_cache_dir() == tmp_path / "cache" / "numba" and numba_temp_dir().parent == tmp_path / "tmp"
    step = "lib/python3.12/site-packages/geovlm/models/cpu_decode_step.py"
    kernels = kernels_of(numba_cache_dir(), venv / step)
    fallback = kernels_of(numba_temp_dir(), previous / step, 100)  # the cache folder could not be written then
    cli = kernels_of(numba_cache_dir(), tmp_path / "cli-venv" / step, 7000)  # `pip install geovlm`'s engine
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious.txt"
    target.write_text("mine")
    (venv / "lib" / "link").symlink_to(outside, target_is_directory=True)
    (kernels / "link.nbc").symlink_to(target)
    users_numba = tmp_path / "my-numba-cache"  # NUMBA_CACHE_DIR of the user's: numba's, not GeoVLM's
    users_numba.mkdir()
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(users_numba))
    stay = [target, tmp_path / "engine-setup.log", tmp_path / "answers" / "geovlm_answers.gpkg",
            tmp_path / "cache" / "hashes" / "h.json", tmp_path / "cache" / "encoders" / "e.onnx",
            users_numba / "other-project.nbi", *cli.iterdir()]
    for path in stay[1:6]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (tmp_path / "cache" / "encoders" / "e.onnx").write_bytes(b"e" * 40_000)
    return [venv, previous, kernels, fallback], stay


def test_remove_asks_first_and_a_cancel_deletes_nothing(qgis_app, tmp_path, monkeypatch):
    """Remove names what it deletes (each folder with its size) and deletes nothing unless confirmed."""
    folders, stay = engine_leftovers(tmp_path, monkeypatch)
    asked = []

    def question(parent, title, text, buttons, default):
        asked.append(text)
        assert default == QMessageBox.StandardButton.Cancel  # Enter does not delete
        return QMessageBox.StandardButton.Cancel

    monkeypatch.setattr(QMessageBox, "question", question)
    dialog = EngineSetupDialog()
    assert dialog.remove_button.isEnabled()
    dialog.remove_button.click()
    [text] = asked
    deleted, kept = text.split("these stay")
    for folder in folders:
        assert str(folder) in deleted and str(folder) not in kept
    assert "(293 KB)" in deleted and "(5 KB)" in deleted  # the venv's 300 000 bytes, the kernels' 5000 bytes
    # what a command-line GeoVLM shares is named, with its size and why it stays
    cache = tmp_path / "cache"
    assert f"• {cache / 'encoders'} (39 KB): vision encoders exported to ONNX" in kept
    assert f"• {cache / 'hashes'} (1 B" in kept and "shared with any GeoVLM on this machine" in kept
    assert f"(7 KB): numba's compiled kernels of {tmp_path / 'cli-venv'}" in kept
    assert dialog.task is None and dialog.state.text().startswith("set up")
    assert all(folder.is_dir() for folder in folders) and all(path.exists() for path in stay)
    dialog.deleteLater()


def test_a_confirmed_remove_deletes_the_engine_and_its_kernel_cache_and_nothing_else(qgis_app, tmp_path,
                                                                                    monkeypatch):
    """Yes deletes the venv, a venv kept aside and numba's kernels compiled from their code (in GeoVLM's cache
    folder and its temporary fallback, which is left empty and goes too); links inside them are unlinked, not
    followed; the log, answers, what a command-line GeoVLM shares (encoders, hashes, its kernels) and the user's
    own NUMBA_CACHE_DIR stay."""
    folders, stay = engine_leftovers(tmp_path, monkeypatch)
    monkeypatch.setattr(QMessageBox, "question", lambda *_: QMessageBox.StandardButton.Yes)
    dialog = EngineSetupDialog()
    dialog.remove_button.click()
    assert wait_for(lambda: dialog.task is None)
    assert not any(folder.exists() for folder in folders), [f for f in folders if f.exists()]
    assert all(path.exists() for path in stay) and stay[0].read_text() == "mine"
    assert not folders[3].parent.exists()  # the temporary fallback, emptied
    assert dialog.state.text() == "not set up"
    log = dialog.log.toPlainText()
    assert all(f"Removing {folder}" in log for folder in folders)
    assert f"Keeping {tmp_path / 'cache' / 'encoders'} (vision encoders" in log
    dialog.deleteLater()


def test_the_setup_dialogs_torch_build_is_remembered_and_automatic_follows_the_gpu(qgis_app, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: tmp_path / "engine-venv")
    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path)
    monkeypatch.setattr(engine_setup, "has_nvidia_gpu", lambda: False)  # a CPU-only machine, whatever this one is
    dialog = EngineSetupDialog()
    assert dialog.torch.currentData() == "auto" == engine_settings.torch_build()
    assert wait_for(lambda: dialog._finder is None) and dialog.runtime.currentData() == "cpu"
    old = tmp_path / "python3.9"  # refused by the task before anything is installed
    old.write_text("#!/bin/sh\necho 3.9\n")
    old.chmod(0o755)
    dialog.python.setFilePath(str(old))
    dialog.setup_button.click()
    task = dialog.task
    assert task is not None  # its plan's torch is "auto" until the task resolves it, which may have happened already
    assert wait_for(lambda: dialog.task is None) and "needs 3.10" in dialog.log.toPlainText()
    assert task.plan.torch == "cpu"  # resolved by the task
    assert "torch: the CPU build (automatic: no NVIDIA GPU found)" in dialog.log.toPlainText()
    assert "automatic: no NVIDIA GPU" in (tmp_path / "engine-setup.log").read_text()

    dialog.torch.setCurrentIndex(dialog.torch.findData("cuda"))
    assert QgsSettings().value(engine_settings.KEY_TORCH_BUILD) == "cuda"
    dialog.setup_button.click()
    assert wait_for(lambda: dialog.task is None) and "torch: the CUDA build (chosen)" in dialog.log.toPlainText()
    dialog.deleteLater()
    again = EngineSetupDialog()
    assert again.torch.currentData() == "cuda"  # remembered in QgsSettings
    assert wait_for(lambda: again._finder is None)
    again.deleteLater()
    QgsSettings().setValue(engine_settings.KEY_TORCH_BUILD, "rocm")
    assert engine_settings.torch_build() == "auto"  # an unknown stored value
    with pytest.raises(ValueError, match="torch build"):
        engine_settings.set_torch_build("rocm")


def test_the_authentication_cell_of_a_new_endpoint_row_is_wide_enough(qgis_app):
    """A row added to the remote-engine table shows its whole authentication picker ("No Authentication"),
    not a squeezed "No A…". Measured with Qt's own sizes, not a guessed margin: the cell (its column less the
    grid line) holds the picker's size hint, the combo box its size hint (its widest entry, arrow and frame;
    the module's `auth_id` configuration, when another test made it, is one of those entries) and its text field
    the current text. (A margin of 30 px passed only after `auth_id` had added a longer entry, and the cell was
    1 px short of the picker's size hint.)"""
    from qgis.PyQt.QtWidgets import QComboBox, QStyle, QStyleOptionComboBox

    page = GeoVlmOptionsPage()
    page.resize(700, 600)
    page.show()
    try:
        table = page.endpoints
        table.add("http://127.0.0.1:8000")
        QCoreApplication.processEvents()
        select = table.cellWidget(0, 1)
        combo = select.findChild(QComboBox)
        assert table.columnWidth(1) >= select.sizeHint().width()
        assert select.width() >= select.sizeHint().width() and select.height() >= select.sizeHint().height()
        assert combo.currentText() == "No Authentication"
        assert combo.width() >= combo.sizeHint().width()
        option = QStyleOptionComboBox()
        option.initFrom(combo)
        field = combo.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, option,
                                             QStyle.SubControl.SC_ComboBoxEditField, combo)
        assert field.width() >= combo.fontMetrics().horizontalAdvance(combo.currentText())
        assert table.columnWidth(0) > 150  # the URL column keeps room
    finally:
        page.hide()


def test_an_unusable_engine_url_keeps_the_options_open_and_says_why(qgis_app, geovlm_settings):
    page = GeoVlmOptionsPage()
    page.show()
    try:
        assert page.isValid() and not page.url_problem.isVisible()
        page.endpoints.add("127.0.0.1:8000")  # typed without http://
        assert not page.isValid()  # QGIS's Options dialog then stays open on this page
        assert page.url_problem.isVisible()
        assert page.url_problem.text() == ("Not saved: an engine URL is http://host:port or https://host, not "
                                           "'127.0.0.1:8000'")
        page.endpoints.item(0, 0).setText("http://127.0.0.1:8000")
        assert page.isValid() and not page.url_problem.isVisible()
    finally:
        page.hide()


def test_remote_engines_without_a_url_keep_the_options_open_and_say_why(qgis_app, geovlm_settings):
    """*Remote engines* ticked with no URL (none added, or an empty row) was saved, and every question then failed
    with "no engine configured": the page says so at OK instead, until a URL is given or the local engine chosen."""
    page = GeoVlmOptionsPage()
    page.show()
    try:
        page.remote_radio.setChecked(True)
        page.endpoints.add("")
        assert not page.isValid() and page.url_problem.isVisible()
        assert page.url_problem.text() == ("Not saved: Remote engines needs at least one engine URL (Add, then "
                                           "http://host:port), or choose the local engine")
        page.endpoints.item(0, 0).setText("http://127.0.0.1:8000")
        assert page.isValid() and not page.url_problem.isVisible()
        page.endpoints.item(0, 0).setText("")
        page.local_radio.setChecked(True)
        assert page.isValid()
    finally:
        page.hide()


def test_the_options_page_is_found_by_its_name(qgis_app):
    """QGIS's Options dialog finds pages by object name: to open on GeoVLM's and to show it when isValid()
    keeps the dialog open (an unnamed page left the user on another page, with OK doing nothing)."""
    from geovlm.ui.options_page import PAGE_NAME

    assert GeoVlmOptionsPage().objectName() == PAGE_NAME == GeoVlmOptionsFactory().title() == "GeoVLM"


def test_the_setup_dialog_notes_onnxruntime_and_torch_on_different_devices(qgis_app, tmp_path, monkeypatch):
    """GPU onnxruntime with CPU torch, or CUDA torch with CPU onnxruntime on a GPU machine: one line in the
    dialog and in the set-up log, and the set-up still starts (here it stops at the refused Python)."""
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: tmp_path / "engine-venv")
    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path)
    monkeypatch.setattr(engine_setup, "has_nvidia_gpu", lambda: True)
    dialog = EngineSetupDialog()
    assert wait_for(lambda: dialog._finder is None) and dialog.runtime.currentData() == "gpu"
    assert dialog.torch.currentData() == "auto" and dialog.mismatch.isHidden()  # auto: CUDA with the GPU
    dialog.torch.setCurrentIndex(dialog.torch.findData("cpu"))
    note = dialog.mismatch.text()
    assert not dialog.mismatch.isHidden() and note.startswith("Note: GPU onnxruntime with torch's CPU build")
    assert "\n" not in note
    dialog.torch.setCurrentIndex(dialog.torch.findData("cuda"))
    assert dialog.mismatch.isHidden()
    dialog.runtime.setCurrentIndex(dialog.runtime.findData("cpu"))
    assert dialog.mismatch.text().startswith("Note: torch's CUDA build with CPU onnxruntime")
    old = tmp_path / "python3.9"  # refused by the task before anything is installed
    old.write_text("#!/bin/sh\necho 3.9\n")
    old.chmod(0o755)
    dialog.python.setFilePath(str(old))
    dialog.setup_button.click()
    assert dialog.task is not None  # not blocked
    assert wait_for(lambda: dialog.task is None)
    assert dialog.mismatch.text() in dialog.log.toPlainText().splitlines()
    assert dialog.mismatch.text() in (tmp_path / "engine-setup.log").read_text().splitlines()
    dialog.deleteLater()
    assert engine_setup.mismatch_note("cpu", "cuda", False) == ""  # no GPU: CUDA torch falls back to the CPU too
    assert engine_setup.mismatch_note("gpu", "auto", None) == ""  # GPU not known yet: nothing to say
    assert engine_setup.mismatch_note("gpu", "auto", False).startswith("Note: GPU onnxruntime")
    assert engine_setup.mismatch_note("cpu", "cpu", True) == engine_setup.mismatch_note("gpu", "cuda", True) == ""


def test_the_options_page_and_the_setup_dialog_say_the_same_state(qgis_app, tmp_path, monkeypatch):
    """One wording of the set-up's state: after a cancelled set-up (a venv without its marker), not set up, set
    up, and set up by another version, the Options page says what the set-up dialog says."""
    venv = tmp_path / "engine-venv"
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: venv)
    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path)
    monkeypatch.setattr(engine_setup, "has_nvidia_gpu", lambda: False)
    from geovlm.plugin.engine_manager import engine_manager

    python = engine_settings.venv_python(venv)
    engine_manager().refresh()
    open_page = GeoVlmOptionsPage()  # open while a set-up is cancelled: it follows
    shown = []
    for case in ("missing", "incomplete", "ready", "outdated"):
        if case == "incomplete":
            python.parent.mkdir(parents=True)
            python.write_text("")
        elif case in ("ready", "outdated"):
            version = geovlm.__version__ if case == "ready" else "0.0.1"
            (venv / engine_setup.MARKER).write_text(json.dumps({"version": version, "runtime": "cpu", "torch": "cpu",
                                                                "time": "2026-11-30T03:00:00"}))
        engine_manager().refresh()  # as the set-up task does when it ends
        QCoreApplication.processEvents()
        dialog, page = EngineSetupDialog(), GeoVlmOptionsPage()
        words = dialog.state.text()
        assert words == engine_setup.setup_text() and page.state_label.text().startswith(words), case
        assert open_page.state_label.text() == page.state_label.text(), case
        shown.append(page.state_label.text())
        dialog.deleteLater()
        page.deleteLater()
    assert shown == [
        "not set up",
        "an unfinished set-up (cancelled or failed): Repair finishes it",
        "set up (CPU onnxruntime, torch's CPU build, 2026-11-30T03:00:00); starts on the first question",
        "set up by another GeoVLM version: Repair updates it (CPU onnxruntime, torch's CPU build, "
        "2026-11-30T03:00:00); starts on the first question",
    ]
    open_page.deleteLater()


def test_user_facing_menu_paths_start_where_qgis_shows_them():
    """Every "A ▸ B" path in the plugin's messages and the README starts at a QGIS menu (Plugins, Settings), never
    at "GeoVLM ▸" or "Options ▸" (GeoVLM's entries are in Plugins ▸ GeoVLM, its page in Settings ▸ Options)."""
    import re
    from pathlib import Path

    root = Path(geovlm.__file__).resolve().parent
    files = [root / "README.md", *sorted((root / "plugin").glob("*.py")), *sorted((root / "ui").glob("*.py"))]
    starts = {(f.name, m.group(1)) for f in files
              for m in re.finditer(r"(?<!▸ )\b(\w+) ▸", f.read_text(encoding="utf-8"))}
    assert ("settings.py", "Plugins") in starts and ("README.md", "Settings") in starts
    assert {word for _, word in starts} <= {"Plugins", "Settings"}, sorted(starts)


def test_a_cancelled_setup_does_not_show_a_full_progress_bar(qgis_app, tmp_path, monkeypatch):
    """QGIS reports 100 % for a task that ends completed, which a cancelled set-up does (no "Task failed"): the
    bar goes back to where the set-up stopped."""
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: tmp_path / "engine-venv")
    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path)
    dialog = EngineSetupDialog()
    dialog.python.setFilePath(engine_setup.find_system_python())
    dialog.start("install")
    task = dialog.task
    assert wait_for(lambda: task.status() == QgsTask.TaskStatus.Running, 10)
    dialog.cancel()
    assert wait_for(lambda: dialog.task is None, 20)
    assert "Stopped: cancelled" in dialog.log.toPlainText()
    assert dialog.progress.value() < 100
    dialog.deleteLater()


def test_the_setup_log_keeps_the_newest_line_in_sight_unless_scrolled_up(qgis_app, tmp_path, monkeypatch):
    """pip's output as the set-up streams it: the newest line stays in sight whatever the font (QPlainTextEdit's
    own following stops for good once its last line overhangs the view by a fraction of a pixel: with QGIS's
    font under Xvfb the final "Done:" was out of sight; here 12 pt does it), while long steps name the venv and
    after a resize; a user who scrolled up keeps their place until they scroll back down."""
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: tmp_path / "engine-venv")
    venv = "/home/someone/.local/share/QGIS/QGIS3/profiles/default/geovlm/engine-venv"
    pip = f"$ {venv}/bin/python -m pip --disable-pip-version-check"
    output = [  # the start of a real set-up's log (with a real user's paths)
        "torch: the CPU build (automatic: no NVIDIA GPU found)", f"== Making the virtual environment {venv}",
        f"$ /usr/bin/python3.11 -m venv {venv}", "== Removing onnxruntime-gpu if present (it owns the same module)",
        f"{pip} uninstall -y onnxruntime-gpu", "WARNING: Skipping onnxruntime-gpu as it is not installed.",
        "torch: from https://download.pytorch.org/whl/cpu (1 retry, 20 s timeout), else from pip's configured sources",
        "== Installing torch's CPU build from https://download.pytorch.org/whl/cpu",
        f"{pip} install --retries 1 --timeout 20 --index-url https://download.pytorch.org/whl/cpu torch==2.13.0",
        "Looking in indexes: https://download.pytorch.org/whl/cpu", "Looking in links: /opt/wheels",
    ]
    for size in [9.0 + 0.2 * k for k in range(18)]:
        dialog = EngineSetupDialog()
        font = dialog.log.font()
        font.setPointSizeF(size)
        dialog.log.setFont(font)
        dialog.show()
        width = dialog.width()
        bar = dialog.log.verticalScrollBar()
        for i in range(60):
            line = output[i % len(output)]
            if line.startswith("== "):
                dialog.step.setText(line[3:])
            dialog.append(line)
            if i == 40:
                dialog.resize(width - 120, dialog.height())
            QCoreApplication.processEvents()
            assert bar.value() == bar.maximum(), f"{size:.1f} pt: line {i} is out of sight"
        assert dialog.width() == width - 120  # a long step wraps instead of widening the dialog
        if size < 12:
            dialog.close()
            dialog.deleteLater()
    reading = bar.maximum() // 2
    bar.setValue(reading)  # the user scrolls up to read
    dialog.append("Collecting one more")
    QCoreApplication.processEvents()
    assert bar.value() == reading
    bar.setValue(bar.maximum())  # and back down: it follows again
    dialog.append("Done: the local engine is set up")
    QCoreApplication.processEvents()
    assert bar.value() == bar.maximum()
    dialog.close()
    dialog.deleteLater()


def test_a_setup_that_ends_with_its_dialog_closed_says_so_in_the_message_bar(qgis_app, qgis_iface, tmp_path,
                                                                             monkeypatch):
    """Closing the dialog leaves the set-up to QGIS's task manager: how it ended (and why, when it failed) then
    comes in QGIS's message bar, not only in the log."""
    venv = engine_venv_with_python(tmp_path, monkeypatch)
    qgis_iface.messageBar().clear_messages()
    dialog = EngineSetupDialog()
    dialog.show()
    dialog.start("remove")
    dialog.close()  # as the Close button does
    assert wait_for(lambda: qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Success))
    assert qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Success) == [f"GeoVLM engine set-up:removed {venv}"]
    dialog.python.setFilePath(str(tmp_path / "no-python"))  # a failure says why
    dialog.start("install")
    assert wait_for(lambda: qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Warning))
    [warning] = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Warning)
    assert warning == f"GeoVLM engine set-up:{tmp_path / 'no-python'} does not run"
    dialog.deleteLater()


def test_a_setup_running_from_another_dialog_reads_as_running_and_none_starts_beside_it(qgis_app, tmp_path,
                                                                                        monkeypatch):
    """The menu's dialog and the Options page's are two dialogs: while one runs a set-up, the other says so and
    starts nothing on the same venv (Remove during an install); it follows when that set-up ends."""
    import sys

    venv = tmp_path / "engine-venv"
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: venv)
    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path)
    slow = tmp_path / "python3"  # "-m venv" makes the venv's folder, then takes its time
    slow.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then mkdir -p "$3/bin"; touch "$3/bin/python"; sleep 60; '
                    f'else exec {sys.executable} "$@"; fi\n')
    slow.chmod(0o755)
    first = EngineSetupDialog()
    first.python.setFilePath(str(slow))
    first.torch.setCurrentIndex(first.torch.findData("cpu"))
    first.start("install")
    assert wait_for(lambda: engine_settings.venv_python(venv).exists(), 30)
    second = EngineSetupDialog()
    assert second.task is None and second.state.text() == "being set up…"
    buttons = (second.setup_button, second.repair_button, second.remove_button)
    assert not any(button.isEnabled() for button in buttons)
    first.cancel()
    assert wait_for(lambda: first.task is None, 30)
    assert wait_for(lambda: second.state.text() == engine_setup.SETUP_WORDS["incomplete"], 5), second.state.text()
    assert all(button.isEnabled() for button in buttons)
    first.deleteLater()
    second.deleteLater()


def test_the_image_size_row_keeps_the_times_sign_between_its_two_sizes(qgis_app, geovlm_settings):
    """"Otherwise, width × height": the × label took the row's spare room, so the height box stood far to the right
    of it. The two boxes share the row and the × sits between them, as wide as it needs."""
    page = GeoVlmOptionsPage()
    page.resize(900, 700)
    page.show()
    try:
        QCoreApplication.processEvents()
        times, width, height = page.times_label, page.width_spin, page.height_spin
        assert times.width() <= times.sizeHint().width() + 2
        assert abs(width.width() - height.width()) <= 2
        assert height.x() - (times.x() + times.width()) <= 12
    finally:
        page.hide()
