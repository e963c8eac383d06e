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
    """The profile's engine venv, moved into a temporary folder (and GeoVLM's cache folder, which a removal
    empties of numba's kernels)."""
    folder = tmp_path / "engine-venv"
    monkeypatch.setenv("GEOVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: folder)
    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path)
    from qgis.core import QgsSettings

    QgsSettings().remove("geovlm")
    return folder


def run_task(plan, cancel_after_line=None, seconds=240):
    """Run a set-up task to its end; (result: ok, message, cancel_s, ended ("completed" or "terminated": how
    QGIS's task manager saw it end), log lines, step titles)."""
    task = EngineSetupTask(plan)
    lines, steps, result = [], [], {}
    task.logLine.connect(lines.append)
    task.stepStarted.connect(steps.append)
    task.done.connect(lambda ok, message: result.update(ok=ok, message=message, description=task.description()))
    task.taskCompleted.connect(lambda: result.update(ended="completed"))
    task.taskTerminated.connect(lambda: result.update(ended="terminated"))
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
    while "ended" not in result and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.02)
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

    # what the engine's numba compiled from the venv's code (core.cache_paths.numba_cache_dir), with GeoVLM's
    # compile marker naming that code, beside the kernels of a command-line GeoVLM, which stay
    root = venv.parent / "cache" / "numba"
    kernels, cli = root / "models_1", root / "models_2"
    for folder, source in ((kernels, package_file), (cli, "/opt/cli-venv/geovlm/models/cpu_decode_step.py")):
        folder.mkdir(parents=True)
        (folder / "cpu_decode_step._decode-212.py310.nbi").write_bytes(b"k")
        (folder / "geovlm-decode-step-0.61.0-1-1.done").write_text(str(source))
    result, _, _ = run_task(SetupPlan(action="remove", venv=venv, kernel_caches=(root,)))
    assert result["ok"] and not venv.exists() and engine_manager().refresh() == "not_set_up"
    assert not kernels.exists() and result["message"] == f"removed {venv}, {kernels}" and cli.is_dir()


def test_cancel_stops_the_running_command(venv, wheel, system_python):
    """A cancel stops the command, reads as cancelled with the state it left (in the set-up dialog's words), and
    is no failed task: the QgsTask ends completed, so QGIS shows no "Task failed"."""
    result, lines, _ = run_task(offline_plan(venv, wheel, system_python), cancel_after_line="-m venv")
    # the state left depends on where the cancel lands (no venv yet, or an unfinished one: "cancelled or failed")
    assert result["ok"] is False
    assert result["message"] == "cancelled; the local engine is now: " + engine_setup.setup_text(venv)
    assert result["ended"] == "completed" and result["description"] == "GeoVLM: install the local engine (cancelled)"
    assert result["cancel_s"] < 6
    assert engine_setup.setup_state(venv)[0] in ("missing", "incomplete") and engine_settings.engine_python() == ""


def test_a_repair_is_unfinished_until_it_ends(venv, wheel, system_python):
    """While a repair runs, pip changes the venv: the set-up reads as unfinished (no engine starts from it), and a
    repair cancelled in its first command leaves it unfinished, not "set up" (the marker of the set-up before it
    said so while geovlm could be half reinstalled)."""
    result, lines, _ = run_task(offline_plan(venv, wheel, system_python))
    assert result["ok"] and engine_setup.setup_state(venv)[0] == "ready", "\n".join(lines[-20:])
    repair = offline_plan(venv, wheel, system_python, "repair")
    result, lines, _ = run_task(repair, cancel_after_line="--force-reinstall")
    assert result["ok"] is False and result["message"].startswith("cancelled")
    assert engine_setup.setup_state(venv)[0] == "incomplete" and engine_settings.engine_python() == ""
    assert "Stopping the local engine (it runs from this environment)" not in lines  # none ran: not said
    result, _, _ = run_task(offline_plan(venv, wheel, system_python, "repair"))
    assert result["ok"] and engine_setup.setup_state(venv)[0] == "ready"
    assert engine_settings.engine_python() == str(engine_settings.venv_python(venv))


def test_setting_up_again_offline_keeps_the_working_engine_and_says_why_it_failed(venv, wheel, system_python,
                                                                                monkeypatch):
    """"Set up again" with pip's index out of reach (here a closed port on 127.0.0.1): the new set-up fails, the one
    before it comes back in place (it was moved aside, not removed), and the message says why in one line (pip's
    last ERROR line and that pip could not reach an index), not only "failed (status 1)". Cancelled, the same."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no configured find-links or index but ours
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    result, lines, _ = run_task(offline_plan(venv, wheel, system_python))
    assert result["ok"], "\n".join(lines[-20:])
    before = engine_setup.setup_text(venv)
    offline = SetupPlan(python=system_python, venv=venv, package="geovlm-nowhere", torch="",
                        pip_args=["--index-url", f"http://127.0.0.1:{closed_port()}/simple", "--retries", "1",
                                  "--no-deps"])
    result, lines, _ = run_task(offline)
    assert result["ok"] is False, result["message"]
    assert result["message"].startswith("Installing the engine (CPU onnxruntime): torch, transformers… failed "
                                        "(status 1): No matching distribution found for geovlm-nowhere")
    assert "(pip could not reach a package index: offline, or a proxy or firewall in the way?)" in result["message"]
    assert result["message"].endswith(f"; the set-up before it was kept; the log is in {venv.parent}/engine-setup.log")
    assert engine_setup.setup_text(venv) == before and engine_settings.engine_python() == str(
        engine_settings.venv_python(venv))
    assert not (venv.parent / (venv.name + engine_setup.PREVIOUS_SUFFIX)).exists()
    result, _, _ = run_task(offline_plan(venv, wheel, system_python), cancel_after_line="-m venv")
    assert result["message"] == f"cancelled; the local engine is now: {before}"
    assert engine_setup.setup_state(venv)[0] == "ready"
    assert not (venv.parent / (venv.name + engine_setup.PREVIOUS_SUFFIX)).exists()


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
    steps = {step.title: step.argv for step in plan.commands()}
    install = next(argv for title, argv in steps.items() if title.startswith("Installing the engine"))
    assert install[-1] == f"{engine_setup.PLUGIN_DIR}[engine,gpu]"
    assert install[1:5] == ["-m", "pip", "--disable-pip-version-check", "install"]
    assert any(argv[-1] == "onnxruntime" and "uninstall" in argv for argv in steps.values())
    # the check imports what the engine only imports optionally: a broken numba fails the set-up, not the speed
    assert {"geovlm.engine.server", "onnxruntime", "numba"} <= set(steps["Checking the engine imports"])
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
    return [step.title for step in steps], [step.argv for step in steps]


def test_a_cpu_torch_on_linux_comes_from_pytorchs_cpu_index_before_the_engine():
    titles, commands = install_steps(torch="cpu", system="Linux")
    [at] = [i for i, title in enumerate(titles) if title.startswith("Installing torch's CPU build")]
    engine = next(i for i, title in enumerate(titles) if title.startswith("Installing the engine"))
    assert at < engine  # torch first: the engine extra's torch==2.13.0 is then already satisfied
    assert commands[at][1:5] == ["-m", "pip", "--disable-pip-version-check", "install"]
    # one retry and a short timeout, as scripts/setup.sh (pip's defaults: 5 retries of 15 s per file)
    assert commands[at][5:] == ["--retries", "1", "--timeout", "20", "--index-url",
                                "https://download.pytorch.org/whl/cpu", "torch==2.13.0"]
    assert "--index-url" not in commands[engine]  # the rest comes from the usual index
    # When that index fails, torch comes from pip's configured sources: the same pip, without the CPU index.
    plan_steps = SetupPlan(python="/usr/bin/python3", venv=Path("/nowhere/venv"), system="Linux").commands()
    step = plan_steps[at]
    assert step.fallback.argv == commands[at][:5] + ["torch==2.13.0"] and step.fallback.required
    assert step.fallback.title == "Installing torch==2.13.0 from pip's configured sources"
    assert [s.fallback is None for s in plan_steps] == [i != at for i in range(len(plan_steps))]
    # The user's own pip arguments (a proxy, a mirror) go first, the CPU index after them.
    _, commands = install_steps(torch="cpu", system="Linux", pip_args=["--proxy", "http://127.0.0.1:3128"])
    assert commands[at][5:] == ["--proxy", "http://127.0.0.1:3128", "--retries", "1", "--timeout", "20",
                                "--index-url", engine_setup.TORCH_CPU_INDEX, engine_setup.TORCH_REQUIREMENT]


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


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def fake_torch_index(folder: Path) -> str:
    """A PEP 503 index in `folder` (a file:// URL) holding one tiny wheel named torch 2.13.0 (a stand-in: nothing
    is downloaded)."""
    import base64
    import hashlib
    import zipfile

    files = {"torch/__init__.py": '__version__ = "2.13.0"\n',
             "torch-2.13.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n",
             "torch-2.13.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             "Tag: py3-none-any\n"}
    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},sha256={digest(text)},{len(text.encode())}\n" for name, text in files.items())
    project = folder / "simple" / "torch"
    project.mkdir(parents=True)
    wheel = project / "torch-2.13.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr("torch-2.13.0.dist-info/RECORD", record + "torch-2.13.0.dist-info/RECORD,,\n")
    (project / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    return (folder / "simple").as_uri() + "/"


def test_an_unreachable_cpu_index_is_asked_once_then_pips_configured_sources(venv, system_python, wheel, tmp_path,
                                                                              monkeypatch):
    """A real set-up on a machine without an NVIDIA GPU, offline: the venv is made, the torch step asks the CPU
    index (here a closed port on 127.0.0.1) with one retry, fails, and the log says that torch now comes from
    pip's configured sources (here an index of one stand-in torch wheel, PIP_INDEX_URL), which installs it; the
    engine step then fails in one line (its dependencies are not there: nothing is downloaded)."""
    monkeypatch.setattr(engine_setup, "has_nvidia_gpu", lambda: False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no configured find-links or index but ours
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    configured = fake_torch_index(tmp_path / "index")
    monkeypatch.setenv("PIP_INDEX_URL", configured)
    index = f"http://127.0.0.1:{closed_port()}/whl/cpu"
    plan = SetupPlan(python=system_python, venv=venv, torch="auto", system="Linux", torch_index=index,
                     package=str(wheel))
    result, lines, steps = run_task(plan)
    assert "torch: the CPU build (automatic: no NVIDIA GPU found)" in lines
    assert f"torch: from {index} (1 retry, 20 s timeout), else from pip's configured sources" in lines
    assert any(line.startswith("$ ") and line.endswith(
        f"-m pip --disable-pip-version-check install --retries 1 --timeout 20 --index-url {index} torch==2.13.0")
        for line in lines)
    asked = lines.index(next(line for line in lines if line.endswith(f"--index-url {index} torch==2.13.0")))
    fell_back = lines.index(next(line for line in lines if line.startswith(f"{index} did not answer")))
    assert sum("Retrying" in line for line in lines[asked:fell_back]) <= 1  # pip's default retries 5 times
    assert lines[fell_back] == (f"{index} did not answer or has no torch==2.13.0: taking it from pip's configured "
                                f"sources (index-url {configured})")
    assert steps[2:4] == [f"Installing torch's CPU build from {index}",
                          "Installing torch==2.13.0 from pip's configured sources"]
    assert any("Successfully installed torch-2.13.0" in line for line in lines[fell_back:])
    assert steps[-1].startswith("Installing the engine")
    assert result["ok"] is False and result["message"].startswith(f"{steps[-1]} failed (status 1)")
    assert engine_setup.setup_state(venv)[0] == "incomplete"


def scripted_venv(venv: Path, index_answers: bool) -> Path:
    """A venv whose python is a scripted pip stand-in: it records each call's arguments, fails `--index-url`
    installs unless `index_answers`, and reports a configured find-links for `pip config list`."""
    python = engine_settings.venv_python(venv)
    python.parent.mkdir(parents=True)
    calls = venv / "calls.txt"
    python.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
case "$*" in
  *"config list"*) echo "global.find-links='/srv/wheels'"; echo "global.cert='/etc/ssl/x.pem'" ;;
  *--index-url*) {"echo 'Successfully installed torch-2.13.0+cpu'" if index_answers else
                   "echo 'ERROR: Could not find a version that satisfies the requirement torch==2.13.0'; exit 1"} ;;
esac
exit 0
""")
    python.chmod(0o755)
    return calls


@pytest.mark.parametrize("index_answers", [False, True])
def test_the_configured_sources_are_the_fallback_only_when_the_cpu_index_fails(venv, index_answers):
    calls = scripted_venv(venv, index_answers)
    plan = SetupPlan(action="repair", venv=venv, torch="cpu", system="Linux", package="geovlm.whl")
    result, lines, steps = run_task(plan, seconds=60)
    assert result["ok"], result["message"] + "\n" + "\n".join(lines)
    installs = [line for line in calls.read_text().splitlines() if "torch==2.13.0" in line]
    quick = f"--retries 1 --timeout 20 --index-url {engine_setup.TORCH_CPU_INDEX} torch==2.13.0"
    note = (f"{engine_setup.TORCH_CPU_INDEX} did not answer or has no torch==2.13.0: taking it from pip's "
            "configured sources (index-url https://pypi.org/simple (pip's default); find-links /srv/wheels)")
    if index_answers:
        assert installs == [f"-m pip --disable-pip-version-check install {quick}"]
        assert "Installing torch==2.13.0 from pip's configured sources" not in steps and note not in lines
    else:
        assert installs == [f"-m pip --disable-pip-version-check install {quick}",
                            "-m pip --disable-pip-version-check install torch==2.13.0"]
        assert note in lines
        assert steps.index("Installing torch==2.13.0 from pip's configured sources") == 3
    assert steps[-1] == "Checking the engine imports" and engine_setup.setup_state(venv)[0] == "ready"


def test_setting_up_again_with_a_bad_python_keeps_the_working_engine(venv, tmp_path):
    venv.mkdir()
    (venv / "kept").write_text("the engine set up before")  # stands for a working venv
    result, lines, _ = run_task(SetupPlan(python=str(tmp_path / "no-such-python"), venv=venv))
    assert result["ok"] is False and (venv / "kept").is_file(), lines
    assert not any(line.startswith("Removing") for line in lines)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_setup_command_ends_when_qgis_is_killed(tmp_path):
    """QGIS killed outright during a set-up (no unload, no cancel): the running command (pip, here a stand-in
    Python whose `-m venv` sleeps) is ended by the kernel instead of going on installing by itself."""
    pidfile = tmp_path / "command.pid"
    fake = tmp_path / "python3"
    fake.write_text(f"""#!/bin/sh
case "$1" in
  -c) case "$2" in *version_info*) echo 3.11 ;; esac; exit 0 ;;
  *) echo $$ > {pidfile}; exec sleep 120 ;;
esac
""")
    fake.chmod(0o755)
    qgis = subprocess.Popen([sys.executable, "-c", f"""
import os, time
from qgis.core import QgsApplication
app = QgsApplication([], False)
app.initQgis()
from geovlm.plugin import settings
settings.data_dir = lambda: __import__("pathlib").Path({str(tmp_path)!r})
from geovlm.plugin.engine_setup import EngineSetupTask, SetupPlan
task = EngineSetupTask(SetupPlan(python={str(fake)!r}, venv=settings.data_dir() / "venv", torch=""))
QgsApplication.taskManager().addTask(task)
while True:
    app.processEvents()
    time.sleep(0.05)
"""], env=dict(os.environ, QT_QPA_PLATFORM="offscreen"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pidfile.is_file(), "the set-up's first command did not start"
        time.sleep(0.3)
        command = int(pidfile.read_text())
    finally:
        qgis.kill()
        qgis.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{command}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = not Path(f"/proc/{command}").exists()
    if not gone:
        os.kill(command, 9)
    assert gone, "the set-up's command outlived QGIS"
