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
    return SetupPlan(action=action, python=python, venv=venv, package=str(wheel), torch="",
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
    monkeypatch.setattr(engine_setup, "NVIDIA_PROC_GPUS", tmp_path / "no-driver")
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


def test_an_nvidia_driver_without_nvidia_smi_counts_as_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    gpus = tmp_path / "proc-driver-nvidia-gpus"
    monkeypatch.setattr(engine_setup, "NVIDIA_PROC_GPUS", gpus)
    assert not engine_setup.has_nvidia_gpu()  # no driver folder
    gpus.mkdir()
    assert not engine_setup.has_nvidia_gpu()  # the driver, no GPU
    (gpus / "0000:01:00.0").mkdir()
    assert engine_setup.has_nvidia_gpu()


def test_the_torch_build_is_the_users_choice_or_follows_the_gpu():
    assert [engine_setup.resolve_torch("auto", gpu) for gpu in (False, True)] == ["cpu", "cuda"]
    for gpu in (False, True):
        assert engine_setup.resolve_torch("cpu", gpu) == "cpu" and engine_setup.resolve_torch("cuda", gpu) == "cuda"
    with pytest.raises(ValueError, match="torch build"):
        engine_setup.resolve_torch("rocm", False)


def install_steps(**plan):
    steps = SetupPlan(python="/usr/bin/python3", venv=Path("/nowhere/venv"), **plan).commands()
    return [title for title, _, _ in steps], [argv for _, argv, _ in steps]


def test_a_cpu_torch_on_linux_comes_from_pytorchs_cpu_index_before_the_engine():
    titles, commands = install_steps(torch="cpu", system="Linux")
    [at] = [i for i, title in enumerate(titles) if title.startswith("Installing torch's CPU build")]
    engine = next(i for i, title in enumerate(titles) if title.startswith("Installing the engine"))
    assert at < engine  # torch first: the engine extra's torch==2.13.0 is then already satisfied
    assert commands[at][1:5] == ["-m", "pip", "--disable-pip-version-check", "install"]
    assert commands[at][5:] == ["--index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0"]
    assert "--index-url" not in commands[engine]  # the rest comes from the usual index
    # The user's own pip arguments (a proxy, a mirror) go first, the CPU index after them.
    _, commands = install_steps(torch="cpu", system="Linux", pip_args=["--proxy", "http://127.0.0.1:3128"])
    assert commands[at][5:] == ["--proxy", "http://127.0.0.1:3128", "--index-url", engine_setup.TORCH_CPU_INDEX,
                                engine_setup.TORCH_REQUIREMENT]


@pytest.mark.parametrize("torch, system", [("cuda", "Linux"), ("cpu", "Windows"), ("cpu", "Darwin"), ("", "Linux")])
def test_pypis_torch_is_taken_where_it_is_the_wanted_build(torch, system):
    titles, commands = install_steps(torch=torch, system=system)
    assert not any(title.startswith("Installing torch") for title in titles)
    assert not any(engine_setup.TORCH_CPU_INDEX in argv for argv in commands)
    with pytest.raises(ValueError):
        install_steps(torch="auto", system=system)  # the task resolves it before it asks for the commands


def test_the_torch_pin_is_the_engine_extras():
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["engine"]
    assert engine_setup.TORCH_REQUIREMENT in extra


def test_the_log_shows_the_torch_choice_and_the_cpu_index_command(venv, system_python, monkeypatch):
    """A real set-up on a machine without an NVIDIA GPU, offline: the venv is made, then the torch step runs
    pip with PyTorch's CPU index, as the log shows, and fails in one line (no index, no wheels: nothing is
    downloaded)."""
    monkeypatch.setattr(engine_setup, "has_nvidia_gpu", lambda: False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no configured index or local wheels: pip finds nothing
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    plan = SetupPlan(python=system_python, venv=venv, torch="auto", system="Linux", pip_args=["--no-index"])
    result, lines, steps = run_task(plan)
    assert "torch: the CPU build (automatic: no NVIDIA GPU found)" in lines
    assert steps[-1] == "Installing torch's CPU build from https://download.pytorch.org/whl/cpu"
    assert any(line.startswith("$ ") and line.endswith(
        "-m pip --disable-pip-version-check install --no-index --index-url https://download.pytorch.org/whl/cpu "
        "torch==2.13.0") for line in lines)
    assert result["ok"] is False and result["message"].startswith(f"{steps[-1]} failed (status 1)")
    assert engine_setup.setup_state(venv)[0] == "incomplete"


def test_setting_up_again_with_a_bad_python_keeps_the_working_engine(venv, tmp_path):
    venv.mkdir()
    (venv / "kept").write_text("the engine set up before")  # stands for a working venv
    result, lines, _ = run_task(SetupPlan(python=str(tmp_path / "no-such-python"), venv=venv))
    assert result["ok"] is False and (venv / "kept").is_file(), lines
    assert not any(line.startswith("Removing") for line in lines)
