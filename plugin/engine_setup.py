""""Set up the local engine…": a virtual environment outside QGIS's Python, with this plugin's engine extra.

The engine needs torch, transformers and onnxruntime, which must never be installed into QGIS's own Python.
So the set-up makes a venv under the QGIS profile's folder (`settings.venv_dir()`) from a system Python >= 3.10
(found, or picked by the user), and runs `pip install "<plugin folder>[engine,cpu]"` (or `[engine,gpu]`, the
CUDA build of onnxruntime, when an NVIDIA driver answers `nvidia-smi -L`) inside it. On Linux, PyPI's torch is a
CUDA build (GBs of CUDA libraries), so the CPU build of torch is installed first from PyTorch's CPU index
(`--index-url https://download.pytorch.org/whl/cpu`, as pytorch.org's install selector gives for Linux/pip/CPU)
when the user picks CPU, or picks automatic and the machine has no NVIDIA GPU, with one retry and a 20 s timeout
(as `scripts/setup.sh`): when that index does not answer (offline, a firewall), torch comes from pip's configured
sources instead (its index, find-links), and the log says which; every command is a
subprocess of `EngineSetupTask`, a `QgsTask` that streams their output, can be cancelled (the running command
is terminated; on Linux the kernel also ends it should QGIS be killed; a cancel ends the task as completed, so
QGIS does not say "Task failed") and writes
`geovlm-setup.json` into the venv when everything worked. "Set up again" moves a working venv aside
(`<venv>.previous`) and puts it back when the new set-up fails or is cancelled (offline, it would otherwise cost
the working engine); a failure says why in one line (pip's last ERROR line, and that pip could not reach a
package index when it could not connect). Repair removes the marker first, so that no engine starts
from a venv pip is changing, and a cancelled repair reads as unfinished). Repair reinstalls the
plugin's copy and fills in missing packages; remove deletes the venv and numba's kernels compiled from it, and keeps
what a command-line GeoVLM shares (`engine_files`). The launcher then runs the engine with
the venv's Python (`settings.engine_python()`).
"""
from __future__ import annotations

import json
import os
import platform
import queue
import shutil
import signal
import subprocess  # nosec B404  # runs pip and venv, fixed argument lists
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .. import __version__
from ..core.cache_paths import cache_dir, numba_cache_dir, numba_temp_dir
from ..engine.launcher import clean_environment
from ..engine.lifeline import die_with_parent
from . import settings as engine_settings
from .engine_files import PREVIOUS_SUFFIX, EngineFolder, engine_folders, remove_folders, shared_folders

LOG_TAG = "GeoVLM"
MIN_PYTHON = (3, 10)
MARKER = engine_settings.SETUP_MARKER
ACTIONS = ("install", "repair", "remove")
ORT_PACKAGES = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}  # the extras of pyproject.toml
RUNNING_WORDS = {"install": "being set up…", "repair": "being repaired…", "remove": "being removed…"}
_running: Dict[int, str] = {}  # id of each EngineSetupTask between its run() and finished(): its action
PLUGIN_DIR = Path(__file__).resolve().parents[1]  # the folder holding pyproject.toml
TORCH_REQUIREMENT = "torch==2.13.0"  # the engine extra's pin in pyproject.toml (a test keeps them equal)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyTorch's index of CPU-only wheels
# pip asks PyTorch's CPU index with one retry and this timeout (s), as scripts/setup.sh does: offline, pip's
# defaults (5 retries, 15 s) spent minutes on it before pip's configured sources were tried.
TORCH_INDEX_RETRIES = 1
TORCH_INDEX_TIMEOUT_S = 20
# The words for `setup_state`'s states: the one wording of the set-up's state, which the set-up dialog, the
# Options page and the Ask dock show (`setup_text`; `engine_manager.state_text`).
SETUP_WORDS = {
    "missing": "not set up",
    "incomplete": "an unfinished set-up (cancelled or failed): Repair finishes it",
    "outdated": "set up by another GeoVLM version: Repair updates it",
    "ready": "set up",
}
# pip's words when it cannot connect to an index (urllib3's errors in its "Retrying ... after connection broken
# by ..." warnings)
UNREACHABLE_WORDS = ("NewConnectionError", "ConnectTimeoutError", "ProxyError", "Max retries exceeded")
TORCH_CHOICES = engine_settings.TORCH_BUILDS  # what the user picks; "auto" resolves by `has_nvidia_gpu()`
NVIDIA_PROC_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU while the Linux driver is loaded


def _run(argv: Sequence[str], timeout: float = 30) -> Optional[subprocess.CompletedProcess]:
    try:
        return subprocess.run(  # nosec B603  # a fixed argument list, no shell
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            env=clean_environment(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def python_version(python: str) -> Optional[Tuple[int, int]]:
    """(major, minor) of the interpreter at `python`, None when it does not run."""
    done = _run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    if done is None or done.returncode != 0:
        return None
    try:
        major, minor = done.stdout.strip().split(".")
        return int(major), int(minor)
    except ValueError:
        return None


def check_python(python: str) -> str:
    """"" when `python` can make the engine's venv, else the reason in one line."""
    version = python_version(python)
    if version is None:
        return f"{python} does not run"
    if version < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return f"{python} is Python {version[0]}.{version[1]}; the engine needs {need} or newer"
    done = _run([python, "-c", "import venv, ensurepip"])
    if done is None or done.returncode != 0:
        return f"{python} cannot make virtual environments (on Debian/Ubuntu: apt install python3-venv)"
    return ""


def find_system_python() -> str:
    """The first Python >= 3.10 on PATH able to make a venv (newest names first), or ""."""
    names = [f"python3.{minor}" for minor in range(14, MIN_PYTHON[1] - 1, -1)] + ["python3", "python"]
    seen = set()
    for name in names:
        path = shutil.which(name)
        if path and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            if not check_python(path):
                return path
    if os.name == "nt" and shutil.which("py"):  # the Windows launcher knows the installed Pythons
        done = _run(["py", "-3", "-c", "import sys; print(sys.executable)"])
        if done is not None and done.returncode == 0 and not check_python(done.stdout.strip()):
            return done.stdout.strip()
    return ""


def has_nvidia_gpu() -> bool:
    """Whether an NVIDIA driver reports a GPU: `nvidia-smi -L` lists one or, without nvidia-smi on PATH, the
    Linux driver's `/proc/driver/nvidia/gpus` holds one. Then the CUDA onnxruntime and torch are the default."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        try:
            return any(NVIDIA_PROC_GPUS.iterdir())
        except OSError:
            return False
    done = _run([smi, "-L"], timeout=20)
    return done is not None and done.returncode == 0 and "GPU" in done.stdout


def default_runtime(gpu: Optional[bool] = None) -> str:
    """ "gpu" with an NVIDIA GPU, else "cpu" (the onnxruntime extra to install); `gpu` None asks
    `has_nvidia_gpu()`."""
    return "gpu" if (has_nvidia_gpu() if gpu is None else gpu) else "cpu"


def resolve_torch(choice: str, gpu: bool) -> str:
    """The torch build to install, "cpu" or "cuda", for the user's `choice` ("auto", "cpu" or "cuda"; see
    `TORCH_CHOICES`) on a machine with (`gpu` True) or without an NVIDIA GPU; raises ValueError for another
    choice."""
    if choice not in TORCH_CHOICES:
        raise ValueError(f"the torch build must be one of {TORCH_CHOICES}, not {choice!r}")
    if choice == "auto":
        return "cuda" if gpu else "cpu"
    return choice


def mismatch_note(runtime: str, torch: str, gpu: Optional[bool]) -> str:
    """One line when the onnxruntime build (`runtime`, "cpu" or "gpu": it runs the vision encoder) and the torch
    build (`torch`, "auto", "cpu" or "cuda": it runs the language model) put the model's two halves on
    different devices, else "". `gpu`: whether the machine has an NVIDIA GPU (`has_nvidia_gpu()`), None while
    unknown (then "auto" says nothing). Inconsistent: GPU onnxruntime with torch's CPU build; torch's CUDA
    build with CPU onnxruntime on a machine with an NVIDIA GPU. A note only: the set-up goes on as chosen."""
    if torch == "auto":
        if gpu is None:
            return ""
        torch = resolve_torch("auto", gpu)
    if runtime == "gpu" and torch == "cpu":
        return ("Note: GPU onnxruntime with torch's CPU build runs the vision encoder on the GPU but the language "
                "model on the CPU (slow); pick torch's CUDA build to run both on the GPU.")
    if runtime == "cpu" and torch == "cuda" and gpu:
        return ("Note: torch's CUDA build with CPU onnxruntime runs the language model on the GPU but the vision "
                "encoder on the CPU; pick GPU onnxruntime to run both on the GPU.")
    return ""


def torch_index_args(torch: str, system: str, index: str = TORCH_CPU_INDEX) -> List[str]:
    """pip's index arguments for installing torch's `torch` build ("cpu" or "cuda") on `system`
    (`platform.system()`): PyTorch's CPU index for "cpu" on Linux, where PyPI's torch is the CUDA build;
    nothing otherwise (PyPI's torch for Windows and macOS has no CUDA libraries, and on Linux it is the CUDA
    build). Source: pytorch.org's "Start Locally" selector (Linux, pip, CPU: `--index-url
    https://download.pytorch.org/whl/cpu`; CUDA: PyPI's default). `index` replaces PyTorch's (tests)."""
    return ["--index-url", index] if torch == "cpu" and system == "Linux" else []


def configured_sources(python: str) -> str:
    """pip's configured sources as the Python at `python` sees them (`pip config list`: config files and PIP_*
    variables), for the log: "index-url ...; find-links ..."; PyPI when no index is configured. One line."""
    done = _run([python, "-m", "pip", "--disable-pip-version-check", "config", "list"], timeout=60)
    found = []
    for line in (done.stdout.splitlines() if done is not None and done.returncode == 0 else []):
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in ("index-url", "extra-index-url", "find-links", "no-index"):
            found.append(f"{name} {' '.join(value.strip().strip(chr(39)).split())}")
    if not any(item.startswith(("index-url", "no-index")) for item in found):
        found.insert(0, "index-url https://pypi.org/simple (pip's default)")
    return "; ".join(found)


class Step(NamedTuple):
    """One command of a set-up: `title` (shown as the step), `argv`, whether it must succeed, a `note` for the log
    before it, and a `fallback` step run instead when it fails, announced in the log by `fallback_note`."""

    title: str
    argv: List[str]
    required: bool
    note: str = ""
    fallback: Optional[Step] = None
    fallback_note: str = ""


def setup_state(venv: Optional[Path] = None) -> Tuple[str, dict]:
    """("missing" | "incomplete" | "outdated" | "ready", the marker's content). "incomplete": a venv without
    a finished set-up (cancelled or failed: repair it); "outdated": set up by another plugin version."""
    venv = venv or engine_settings.venv_dir()
    if not engine_settings.venv_python(venv).is_file():
        return "missing", {}
    try:
        marker = json.loads((venv / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "incomplete", {}
    return ("ready" if marker.get("version") == __version__ else "outdated"), marker


def setup_text(venv: Optional[Path] = None) -> str:
    """The set-up's state in words (`SETUP_WORDS`), with what a finished set-up installed and when: the one text
    the set-up dialog, the Options page and the Ask dock show for it."""
    state, marker = setup_state(venv)
    text = SETUP_WORDS[state]
    if marker:
        torch = f", torch's {str(marker['torch']).upper()} build" if marker.get("torch") else ""
        text += f" ({str(marker.get('runtime', '?')).upper()} onnxruntime{torch}, {marker.get('time', '')})"
    return text


def running_text() -> str:
    """What a set-up running in this process does, in the words the set-up dialog shows ("being set up…", "being
    repaired…", "being removed…"); "" when none runs. The Options page and the Ask dock show them instead of the
    venv's state meanwhile (`engine_manager.state_text`): a venv being made reads as an unfinished set-up."""
    actions = list(_running.values())
    return RUNNING_WORDS[actions[-1]] if actions else ""


@dataclass
class SetupPlan:
    """What the task does. `runtime`: the onnxruntime extra, "cpu" or "gpu". `torch`: the torch build, "cpu"
    or "cuda", installed first with `torch_index_args(torch, system, torch_index)` when those are not empty (the
    CPU build on Linux: one retry, a short timeout, then pip's configured sources as a fallback); "auto" is
    resolved by the task (`resolve_torch` with `has_nvidia_gpu()`, off the GUI thread) before `commands()` runs;
    "" leaves torch to the engine extra's install. `pip_args` go to every pip call (e.g. an index, a proxy, or
    for offline tests `--no-index --find-links DIR`); `venv_args` to `python -m venv`; `package` replaces the
    plugin folder as what pip installs (a built wheel, for tests); `check_modules` are imported by the venv's
    Python at the end to prove the set-up; `torch_index` replaces PyTorch's CPU index (tests); `kernel_caches` are
    GeoVLM's numba cache folders (`core.cache_paths.numba_cache_dir` and its temporary fallback `numba_temp_dir`),
    in which "remove" deletes the kernels compiled from the venv's code; `cache` is GeoVLM's cache folder
    (`core.cache_paths.cache_dir`), whose shared contents "remove" names and keeps (`engine_files`)."""

    action: str = "install"
    python: str = ""
    runtime: str = "cpu"
    torch: str = "cpu"
    system: str = field(default_factory=platform.system)
    venv: Path = field(default_factory=engine_settings.venv_dir)
    plugin_dir: Path = PLUGIN_DIR
    pip_args: List[str] = field(default_factory=list)
    package: str = ""
    venv_args: List[str] = field(default_factory=list)
    # numba: the engine imports it only optionally (the compiled CPU decode step), so a broken one would slow
    # decoding silently instead of failing here
    check_modules: Tuple[str, ...] = ("geovlm.engine.server", "geovlm.models.pipeline", "onnxruntime", "numba")
    torch_index: str = TORCH_CPU_INDEX
    kernel_caches: Tuple[Path, ...] = field(default_factory=lambda: (numba_cache_dir(), numba_temp_dir()))
    cache: Path = field(default_factory=cache_dir)

    def removes(self) -> List[EngineFolder]:
        """What "remove" deletes (`engine_files.engine_folders`: those of them that exist)."""
        return engine_folders(self.venv, self.kernel_caches)

    def keeps(self) -> List[EngineFolder]:
        """What "remove" leaves, shared with any GeoVLM (`engine_files.shared_folders`: those that exist)."""
        return shared_folders(self.cache, self.venv, self.kernel_caches)

    def commands(self) -> List[Step]:
        """Each `Step`; raises ValueError for an unknown action, runtime or torch build."""
        if self.action not in ACTIONS or self.runtime not in ORT_PACKAGES or self.torch not in ("", "cpu", "cuda"):
            raise ValueError(f"action must be one of {ACTIONS}, runtime cpu or gpu, torch cpu, cuda or empty")
        if self.action == "remove":
            return []
        vpy = str(engine_settings.venv_python(self.venv))
        pip = [vpy, "-m", "pip", "--disable-pip-version-check", "install", *self.pip_args]
        package = self.package or str(self.plugin_dir)
        other = ORT_PACKAGES["gpu" if self.runtime == "cpu" else "cpu"]
        steps = []
        if self.action == "install" or not engine_settings.venv_python(self.venv).is_file():
            steps.append(Step(f"Making the virtual environment {self.venv}",
                              [self.python, "-m", "venv", *self.venv_args, str(self.venv)], True))
        else:
            steps.append(Step("Reinstalling GeoVLM's own files",
                              [*pip, "--force-reinstall", "--no-deps", package], True))
        steps.append(Step(f"Removing {other} if present (it owns the same module)",
                          [vpy, "-m", "pip", "--disable-pip-version-check", "uninstall", "-y", other], False))
        index = torch_index_args(self.torch, self.system, self.torch_index)
        if index:
            fallback = Step(f"Installing {TORCH_REQUIREMENT} from pip's configured sources",
                            [*pip, TORCH_REQUIREMENT], True)
            quick = ["--retries", str(TORCH_INDEX_RETRIES), "--timeout", str(TORCH_INDEX_TIMEOUT_S)]
            steps.append(Step(f"Installing torch's {self.torch.upper()} build from {index[-1]}",
                              [*pip, *quick, *index, TORCH_REQUIREMENT], True,
                              f"torch: from {index[-1]} ({TORCH_INDEX_RETRIES} retry, {TORCH_INDEX_TIMEOUT_S} s "
                              "timeout), else from pip's configured sources", fallback,
                              f"{index[-1]} did not answer or has no {TORCH_REQUIREMENT}: taking it from pip's "
                              "configured sources"))
        steps.append(Step(f"Installing the engine ({self.runtime.upper()} onnxruntime): torch, transformers…",
                          [*pip, f"{package}[engine,{self.runtime}]"], True))
        probe = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
        steps.append(Step("Checking the engine imports", [vpy, "-c", probe, *self.check_modules], True))
        return steps


class EngineSetupTask(QgsTask):
    """Runs a `SetupPlan` in QGIS's task manager. Signals (queued to the GUI thread): `logLine(text)` for
    each output line, `stepStarted(title)`; `done(ok, message)` from `finished()` (after a cancel: ok False, the
    message "cancelled; the local engine is now: <setup_text>", and the QgsTask itself ended completed, so
    QGIS shows no "Task failed"). The whole log is also written to `<profile>/geovlm/engine-setup.log`."""

    logLine = pyqtSignal(str)  # noqa: N815 (Qt's naming)
    stepStarted = pyqtSignal(str)  # noqa: N815
    done = pyqtSignal(bool, str)

    def __init__(self, plan: SetupPlan):
        super().__init__(f"GeoVLM: {plan.action} the local engine", QgsTask.Flag.CanCancel)
        self.plan = plan
        self.message = ""
        self.cancelled = False  # set when a cancel stopped it (the task then ends completed, not terminated)
        self.log_path = engine_settings.data_dir() / "engine-setup.log"
        self._last_error, self._unreachable = "", False  # of the last command run (`_command`, `_why`)

    def run(self) -> bool:
        """QgsTask's work, off the GUI thread: marks the task as running (`running_text`, told to the engine
        manager's `stateChanged`), then runs the plan's steps, writing every line to `log_path`. True when done;
        False with `message` saying why (an OSError or ValueError is caught and said, not raised)."""
        from .engine_manager import engine_manager

        _running[id(self)] = self.plan.action
        engine_manager().refresh()  # the dock and the Options page now say what runs (`running_text`)
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "w", encoding="utf-8") as log:
                return self._run_plan(log)
        except (OSError, ValueError) as exc:
            self.message = f"the set-up failed: {exc}"
            return False

    def _run_plan(self, log) -> bool:
        from .engine_manager import engine_manager

        plan = self.plan
        if plan.action != "remove":
            gpu = None
            if plan.torch == "auto":
                gpu = has_nvidia_gpu()
                plan.torch = resolve_torch("auto", gpu)
                found = "an NVIDIA GPU found" if gpu else "no NVIDIA GPU found"
                self._say(log, f"torch: the {plan.torch.upper()} build (automatic: {found})")
            elif plan.torch:
                self._say(log, f"torch: the {plan.torch.upper()} build (chosen)")
            if plan.runtime == "cpu" and plan.torch == "cuda" and gpu is None:
                gpu = has_nvidia_gpu()  # only this pairing depends on the machine
            note = mismatch_note(plan.runtime, plan.torch, gpu)
            if note:
                self._say(log, note)
        if plan.action == "install":  # before anything is stopped or removed: a bad pick must not cost the old venv
            reason = check_python(plan.python)
            if reason:
                self.message = reason
                return False
        if plan.action == "repair":  # unfinished until it ends: no engine starts from a venv pip is changing, and
            (plan.venv / MARKER).unlink(missing_ok=True)  # a cancelled repair reads "unfinished", not "set up"
        if plan.action != "install" or plan.venv.exists():
            if engine_manager().running():
                self._say(log, "Stopping the local engine (it runs from this environment)")
            engine_manager().stop()  # also re-derives its state from the marker's absence
        if plan.action == "remove":
            folders = plan.removes()
            for folder in folders:
                self._say(log, f"Removing {folder.path} ({folder.what})")
            for folder in plan.keeps():
                self._say(log, f"Keeping {folder.path} ({folder.what})")
            left = remove_folders(folders, plan.kernel_caches)
            if left:
                self.message = f"could not remove {', '.join(map(str, left))} (in use, or no permission)"
                return False
            self.message = f"removed {', '.join(str(f.path) for f in folders) or 'nothing: nothing was there'}"
            return True
        previous = plan.venv.with_name(plan.venv.name + PREVIOUS_SUFFIX)
        shutil.rmtree(previous, ignore_errors=True)  # left by a QGIS that ended during a set-up
        kept = plan.action == "install" and plan.venv.exists()
        if kept:  # "Set up again" offline must not cost the working engine: it comes back unless this one finishes
            self._say(log, f"Moving the old {plan.venv} aside ({previous.name}) until the new one is set up")
            plan.venv.rename(previous)
        finished = None
        try:
            finished = self._run_steps(plan, log)
        finally:
            if kept and finished:
                shutil.rmtree(previous, ignore_errors=True)
            elif kept:
                shutil.rmtree(plan.venv, ignore_errors=True)
                previous.rename(plan.venv)
                self._say(log, f"The set-up before it is back in {plan.venv}: {setup_text(plan.venv)}")
        if finished is None:
            return self._cancelled()
        if not finished:
            self.message += ("; the set-up before it was kept" if kept else "") + f"; the log is in {self.log_path}"
        return finished

    def _run_steps(self, plan: SetupPlan, log) -> Optional[bool]:
        """Run the plan's steps and write the marker: True when all succeeded, False when one failed (the reason
        in `message`), None when cancelled."""
        steps = plan.commands()
        for index, step in enumerate(steps):
            if step.note:
                self._say(log, step.note)
            status = self._step(step, log)
            if status != 0 and step.fallback is not None and not self.isCanceled():
                sources = configured_sources(step.fallback.argv[0])
                self._say(log, f"{step.fallback_note} ({sources})")
                step, status = step.fallback, self._step(step.fallback, log)
            if self.isCanceled():
                return None
            if status != 0 and step.required:
                self.message = f"{step.title} failed (status {status}){self._why()}"
                return False
            self.setProgress(100.0 * (index + 1) / len(steps))
        marker = {"version": __version__, "runtime": plan.runtime, "torch": plan.torch, "python": plan.python or "",
                  "plugin_dir": str(plan.plugin_dir), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (plan.venv / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        self.message = f"the local engine is set up in {plan.venv}"
        return True

    def _why(self) -> str:
        """": <the last ERROR line of the failed command's output>", and when pip could not connect, that it could
        not reach a package index: the reason a one-line message can give (the log has the rest)."""
        why = f": {self._last_error}" if self._last_error else ""
        if self._unreachable:
            why += " (pip could not reach a package index: offline, or a proxy or firewall in the way?)"
        return why

    def _step(self, step: Step, log) -> int:
        self.stepStarted.emit(step.title)
        self._say(log, f"== {step.title}\n$ {' '.join(step.argv)}")
        return self._command(step.argv, log)

    def _cancelled(self) -> bool:
        """A cancel is no failure: run() returns True, so the QgsTask ends completed (QGIS says "Task failed"
        for a terminated one), and `finished` reports it as cancelled, with the state it left."""
        self.cancelled = True
        self.message = f"cancelled; the local engine is now: {setup_text(self.plan.venv)}"
        self.setDescription(f"{self.description()} (cancelled)")  # what QGIS's "Task complete" names
        return True

    def _say(self, log, text: str) -> None:
        log.write(text + "\n")
        log.flush()
        for line in text.splitlines():
            self.logLine.emit(line)

    def _command(self, argv: List[str], log) -> int:
        """Run one command, streaming its output; terminate it when the task is cancelled. Remembers its last
        "ERROR:" line and whether pip failed to connect (`_why`)."""
        self._last_error, self._unreachable = "", False
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            proc = self._proc = subprocess.Popen(  # nosec B603  # a fixed argument list, no shell
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                errors="replace", env=clean_environment(), cwd=str(engine_settings.data_dir()),
                start_new_session=os.name == "posix", creationflags=flags,
                preexec_fn=die_with_parent(),  # QGIS killed mid-set-up: pip does not go on installing by itself
            )
        except OSError as exc:
            self._say(log, f"could not run {argv[0]}: {exc}")
            return -1
        lines: queue.Queue = queue.Queue()

        def read():
            for line in proc.stdout:
                lines.put(line)

        reader = threading.Thread(target=read, name="geovlm-setup-output", daemon=True)
        reader.start()
        while True:
            try:
                line = lines.get(timeout=0.1).rstrip("\n")
                self._say(log, line)
                if line.startswith("ERROR:"):
                    self._last_error = line[len("ERROR:"):].strip()
                self._unreachable = self._unreachable or any(word in line for word in UNREACHABLE_WORDS)
                continue
            except queue.Empty:
                pass
            if self.isCanceled() and proc.poll() is None:
                _terminate(proc)
            if proc.poll() is not None and not reader.is_alive() and lines.empty():
                break
        proc.stdout.close()
        return proc.returncode

    def finished(self, result: bool) -> None:  # noqa: D401 (QgsTask's name), on the GUI thread
        """On the GUI thread once `run` returned (or the task was cancelled before it ran): logs the outcome to
        QgsMessageLog (tag "GeoVLM"), ends the running mark, refreshes the engine manager's state and emits
        `done(ok, message)`."""
        if not result and self.isCanceled():  # cancelled before it ran (a queued task is terminated by QGIS)
            self.cancelled = True
            self.message = f"cancelled; the local engine is now: {setup_text(self.plan.venv)}"
        if not result and not self.message:
            self.message = "the set-up failed"
        ok = bool(result) and not self.cancelled
        level = (Qgis.MessageLevel.Info if self.cancelled else
                 Qgis.MessageLevel.Success if ok else Qgis.MessageLevel.Warning)
        QgsMessageLog.logMessage(f"engine set-up ({self.plan.action}): {self.message}", LOG_TAG, level)
        from .engine_manager import engine_manager

        _running.pop(id(self), None)
        engine_manager().refresh()  # the state it left, in the dock and the Options page too
        self.done.emit(ok, self.message)


def _terminate(proc: subprocess.Popen) -> None:
    """Stop a command and its children (pip builds in subprocesses): its whole session on POSIX."""
    def send(sig):
        try:
            if os.name == "posix":
                os.killpg(proc.pid, sig)
            elif sig == signal.SIGTERM:
                proc.terminate()
            else:
                proc.kill()
        except OSError:
            pass  # already gone

    send(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        send(getattr(signal, "SIGKILL", signal.SIGTERM))
