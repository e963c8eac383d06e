""""Set up the local engine…": a venv outside QGIS's Python made by a QgsTask from a system Python, this
plugin's package installed into it, the install cancelled, repaired and removed; the onnxruntime build chosen
by the machine. To stay offline and fast, the tests install a wheel built from this checkout with
`--no-index --no-deps` (the real set-up installs the plugin folder with its engine extra and dependencies)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication

import geovlm
from geovlm.plugin import engine_setup
from geovlm.plugin import settings as engine_settings
from geovlm.plugin.engine_manager import engine_manager
from geovlm.plugin.engine_setup import EngineSetupTask, SetupPlan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("geovlm-*.whl")
    return built


@pytest.fixture
def venv(tmp_path, monkeypatch, qgis_app):
    """The profile's engine venv, moved into a temporary folder."""
    folder = tmp_path / "engine-venv"
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: folder)
    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path)
    from qgis.core import QgsSettings

    QgsSettings().remove("geovlm")
    return folder


def run_task(plan, cancel_after_line=None, seconds=240):
    task = EngineSetupTask(plan)
    lines, steps, result = [], [], {}
    task.logLine.connect(lines.append)
    task.stepStarted.connect(steps.append)
    task.done.connect(lambda ok, message: result.update(ok=ok, message=message))
    QgsApplication.taskManager().addTask(task)
    deadline = time.monotonic() + seconds
    cancelled_at = None
    while "ok" not in result and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        if cancel_after_line and cancelled_at is None and any(cancel_after_line in line for line in lines):
            task.cancel()
            cancelled_at = time.monotonic()
        time.sleep(0.02)
    assert "ok" in result, "the set-up task did not finish"
    result["cancel_s"] = time.monotonic() - cancelled_at if cancelled_at else None
    return result, lines, steps


@pytest.fixture(scope="module")
def system_python():
    found = engine_setup.find_system_python()
    assert found and not engine_setup.check_python(found)
    return found


def offline_plan(venv, wheel, python="", action="install"):
    return SetupPlan(action=action, python=python, venv=venv, package=str(wheel),
                     pip_args=["--no-index", "--no-deps"],
                     check_modules=("geovlm.core.client", "geovlm.engine.launcher"))


def test_set_up_repair_and_remove(venv, wheel, system_python):
    assert engine_setup.setup_state(venv)[0] == "missing" and engine_settings.engine_python() == ""
    result, lines, steps = run_task(offline_plan(venv, wheel, system_python))
    assert result["ok"], result["message"] + "\n" + "\n".join(lines[-20:])
    assert steps[0].startswith("Making the virtual environment") and steps[-1] == "Checking the engine imports"
    assert any("pip" in line and "install" in line and f"{wheel}[engine,cpu]" in line for line in lines)
    state, marker = engine_setup.setup_state(venv)
    assert state == "ready" and marker["version"] == geovlm.__version__ and marker["runtime"] == "cpu"
    python = engine_settings.venv_python(venv)
    assert engine_settings.engine_python() == str(python)
    # The venv's own copy of the package, not this checkout and not QGIS's Python.
    where = subprocess.run([str(python), "-c", "import geovlm, sys; print(geovlm.__file__); print(sys.prefix)"],
                           capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    package_file, prefix = where.split()
    assert Path(package_file).is_relative_to(venv) and Path(prefix) == venv
    assert (venv.parent / "engine-setup.log").read_text().count("== ") == len(steps)
    assert engine_manager().refresh() == "stopped"

    (venv / engine_setup.MARKER).unlink()  # a set-up that did not finish: repair completes it
    assert engine_setup.setup_state(venv)[0] == "incomplete" and engine_settings.engine_python() == ""
    result, lines, steps = run_task(offline_plan(venv, wheel, system_python, "repair"))
    assert result["ok"] and steps[0] == "Reinstalling GeoVLM's own files"
    assert engine_setup.setup_state(venv)[0] == "ready"

    result, _, _ = run_task(SetupPlan(action="remove", venv=venv))
    assert result["ok"] and not venv.exists() and engine_manager().refresh() == "not_set_up"


def test_cancel_stops_the_running_command(venv, wheel, system_python):
    result, lines, _ = run_task(offline_plan(venv, wheel, system_python), cancel_after_line="-m venv")
    assert result["ok"] is False and result["message"].startswith("cancelled")
    assert result["cancel_s"] < 6
    assert engine_setup.setup_state(venv)[0] in ("missing", "incomplete") and engine_settings.engine_python() == ""


def test_a_python_too_old_is_refused_in_one_line(venv, tmp_path):
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\necho 3.9\n")
    old.chmod(0o755)
    assert engine_setup.check_python(str(old)).endswith("the engine needs 3.10 or newer")
    result, _, _ = run_task(SetupPlan(python=str(old), venv=venv))
    assert result["ok"] is False and "needs 3.10" in result["message"] and not venv.exists()


def test_the_real_install_is_the_plugins_engine_extra_with_the_right_onnxruntime(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    monkeypatch.setenv("PATH", str(fake))
    assert engine_setup.default_runtime() == "cpu"  # no nvidia-smi
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    assert engine_setup.default_runtime() == "gpu"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no driver' >&2\nexit 9\n")
    assert engine_setup.default_runtime() == "cpu"

    plan = SetupPlan(python="/usr/bin/python3", runtime="gpu", venv=tmp_path / "venv")
    steps = {title: argv for title, argv, _ in plan.commands()}
    install = next(argv for title, argv in steps.items() if title.startswith("Installing the engine"))
    assert install[-1] == f"{engine_setup.PLUGIN_DIR}[engine,gpu]"
    assert install[1:5] == ["-m", "pip", "--disable-pip-version-check", "install"]
    assert any(argv[-1] == "onnxruntime" and "uninstall" in argv for argv in steps.values())
    assert (engine_setup.PLUGIN_DIR / "pyproject.toml").is_file()
