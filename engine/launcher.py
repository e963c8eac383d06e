"""The embedded local engine: `geovlm serve` in a child process on a free loopback port.

Standard library only, so the QGIS side can import it. The child runs from a configured Python with a clean
environment (no QGIS PYTHONPATH, no PROJ/GDAL/Qt or library-path variables; PYTHONPATH only when that Python
cannot import geovlm by itself, as in a plugin-only install), binds port 0 on 127.0.0.1 and reports its URL
through a ready file; the launcher then waits for /health. A failed start raises `EngineStartError` with
the end of the engine's own output. A crashed engine is started again on the same port (a few times at
most; `give_up_by` says by when it is up or given up, for whoever waits for it), and the engine is stopped when
the launcher stops or the interpreter exits; should this process be
killed outright, the engine sees it gone and exits by itself; the temporary folder it leaves
(`geovlm-engine-*`, with the log) is removed by the next launcher that starts. Each launch gets a random API
key, handed over in the environment (never on the command line), so other local users cannot use it.
"""
from __future__ import annotations

import atexit
import http.client
import json
import logging
import os
import queue
import re
import secrets
import shutil
import subprocess  # nosec B404  # the launcher starts the engine, a fixed command
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from .lifeline import alive, die_with_parent

log = logging.getLogger("geovlm.launcher")

DROP_VARIABLES = (
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PYTHONUSERBASE", "LD_LIBRARY_PATH"
)
DROP_PREFIXES = ("QGIS", "PROJ_", "GDAL_", "CPL_", "OGR_", "QT_", "PYQGIS", "DYLD_")
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder that holds the geovlm package
KEY_VARIABLE = "GEOVLM_API_KEY"
DIR_PREFIX = "geovlm-engine-"
_ERROR_LINE = re.compile(r" (ERROR|CRITICAL) |^[\w.]*(Error|Exception): |^geovlm \w+: ")  # a log level, a
# Python exception, a CLI error (not a logger named uvicorn.error)
OWNER_FILE = "launcher.json"  # {"pid": the launcher's process id}, in each engine's temporary folder
PROBE_TIMEOUT_S = 60.0  # the most the check whether the engine's Python imports geovlm takes (`_imports_geovlm`)
LAUNCH_END_S = 15.0  # the most a launch takes beyond its start timeout to end and be followed by the next step:
# a last /health check (2 s), SIGTERM then SIGKILL of an engine that did not answer (5 s each, `_terminate`), the
# watcher's next look (0.25 s), and the next engine's spawn (about 2 s to spare)


class EngineStartError(RuntimeError):
    """The engine did not come up; the message ends with the engine's own last output."""


def clean_environment(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """A copy of `base` (the current environment) without the variables QGIS sets for its own Python and
    libraries, with the hub offline and output unbuffered."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if k not in DROP_VARIABLES and not k.upper().startswith(DROP_PREFIXES)
    }
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return env


class LocalEngine:
    """Starts, watches and stops one local engine. Use `start()` / `stop()` or a `with` block. `env` is the
    environment to clean (default: this process's); `api_key` defaults to a fresh random one. `restarts`
    counts the restarts since the engine last ran `healthy_s` without crashing; past `max_restarts` the
    launcher gives up, says why in one line in `down_reason`, and calls `on_down(last_error)` from its watcher
    thread. From that thread too: `on_restart(line)` as a crashed engine is started again ("was killed by signal
    9; restart 1 of 3", before its model loads), and `on_restarted()` once the restarted engine answers /health
    (a restart that fails is a crash again: the next restart, or `on_down`)."""

    def __init__(
        self,
        python: Optional[str] = None,
        model: Optional[str] = None,
        family: Optional[str] = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 300.0,
        max_restarts: int = 3,
        env: Optional[Mapping[str, str]] = None,
        api_key: Optional[str] = None,
        healthy_s: float = 300.0,
        on_down: Optional[Callable[[str], None]] = None,
        on_restart: Optional[Callable[[str], None]] = None,
        on_restarted: Optional[Callable[[], None]] = None,
    ):
        self.python = python or sys.executable
        self.model = model
        self.family = family
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.max_restarts = max_restarts
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.url: Optional[str] = None
        self.restarts = 0
        self.healthy_s = healthy_s
        self.on_down = on_down
        self.on_restart, self.on_restarted = on_restart, on_restarted
        self._up_since = 0.0
        self.last_error: Optional[str] = None
        self.down_reason: Optional[str] = None
        self._env = clean_environment(env)
        self._env[KEY_VARIABLE] = self.api_key
        self._dir: Optional[Path] = None
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.RLock()
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        self._give_up_at: Optional[float] = None  # `give_up_by`
        self._watching = False  # the engine came up and the watcher restarts it when it crashes

    @property
    def pid(self) -> Optional[int]:
        """The engine process's id, None while none was started (or after `stop`)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Optional[Path]:
        """The engine's output (engine.log in its temporary folder), None before `start` and after `stop`."""
        return self._dir / "engine.log" if self._dir else None

    def command(self, port: int) -> List[str]:
        """The argument list that starts `geovlm serve` on 127.0.0.1:`port` (0: any free port) with this launcher's
        Python, model, family and extra arguments, its ready file and this process as the parent to watch."""
        args = [self.python, "-m", "geovlm", "serve", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--ready-file", str(self._dir / "ready.json"), "--parent-pid", str(os.getpid())]
        if self.model:
            args += ["--model", str(self.model)]
        if self.family:
            args += ["--family", self.family]
        return args + self.extra_args

    def start(self) -> str:
        """Start the engine and wait until it answers /health; returns its URL. Interrupted while it waits
        (Ctrl-C: KeyboardInterrupt), it stops the engine it was starting (and removes its folder) before the
        interruption goes on: no engine is left loading a model for nobody. EngineStartError when it does not come
        up (with the end of the engine's output, where it ran)."""
        with self._start_lock:
            with self._lock:
                if self._proc is not None and self._proc.poll() is None:
                    return self.url
                self._stopping.clear()
                self.down_reason, self._watching = None, False
                self._give_up_at = time.monotonic() + PROBE_TIMEOUT_S + self.start_timeout + LAUNCH_END_S
                remove_leftovers()
                self._dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
                (self._dir / OWNER_FILE).write_text(json.dumps({"pid": os.getpid()}), encoding="utf-8")
                if "PYTHONPATH" not in self._env and not _imports_geovlm(self.python, self._env, self._dir):
                    self._env["PYTHONPATH"] = str(PACKAGE_PARENT)  # a plugin-only install
                started: queue.Queue = queue.Queue(1)
                self._watcher = threading.Thread(
                    target=self._supervise, args=(started,), name="geovlm-engine-watch", daemon=True
                )
                self._watcher.start()
            try:
                error = started.get()
            except BaseException:  # Ctrl-C while it loads: the engine answers no request yet, so a short stop
                self.stop(timeout=5)
                raise
            if error is not None:
                self._give_up_at = None
                self.stop()
                raise error
            atexit.register(self.stop)
            return self.url

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the engine (SIGTERM, so requests in flight finish; killed after `timeout`, longer than the
        engine's own graceful stop)."""
        self._stopping.set()
        self._give_up_at = None
        with self._lock:
            if self._proc is not None:
                _terminate(self._proc, timeout)
                self._proc = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
        atexit.unregister(self.stop)
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(5)

    def running(self) -> bool:
        """Whether the engine process exists and has not exited."""
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    def give_up_by(self) -> Optional[float]:
        """While the engine starts (`start`, or the watcher's restart of a crashed engine): the `time.monotonic()`
        by which this launcher has it answering /health, or has given it up (`start` raised, or `on_down` was
        called). That is the running launch's /health deadline (`start_timeout` after its spawn), the time to end
        it (LAUNCH_END_S), and one more start timeout and end for each restart left after it (`max_restarts` less
        `restarts`: none after the first start, whose failure `start` raises); before the first launch, also the
        check of the engine's Python (PROBE_TIMEOUT_S). None while no start is under way (up, stopped, given up)."""
        return self._give_up_at

    def restarts_left(self) -> int:
        """Restarts the watcher may still make after the running launch (0 during `start`)."""
        return max(0, self.max_restarts - self.restarts) if self._watching else 0

    def __enter__(self) -> LocalEngine:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ internals

    def _supervise(self, started: queue.Queue) -> None:
        """Launch the engine, then watch it, from this one thread: the kernel's die-with-parent signal is
        tied to the thread that started the child, so it must live as long as the engine."""
        try:
            self._launch(0)
        except Exception as exc:  # handed to start()
            started.put(exc if isinstance(exc, EngineStartError) else EngineStartError(str(exc)))
            return
        self._watching = True
        started.put(None)
        self._watch()

    def _launch(self, port: int) -> None:
        ready = self._dir / "ready.json"
        ready.unlink(missing_ok=True)
        # Windows: no console window, and Ctrl+C in QGIS's console does not reach the engine.
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        flags |= getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        with self._lock, open(self.log_path, "ab") as logfile:  # the child writes to it
            if self._stopping.is_set():
                raise EngineStartError("the engine was stopped while starting")
            try:
                proc = self._proc = subprocess.Popen(  # nosec B603  # a fixed argument list, no shell
                    self.command(port),
                    env=self._env,
                    cwd=str(self._dir),
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    start_new_session=os.name == "posix",
                    creationflags=flags,
                    preexec_fn=die_with_parent(),  # one prctl call, its libc looked up before the fork
                )
            except OSError as exc:
                raise EngineStartError(f"could not run {self.python}: {exc}") from exc
        deadline = time.monotonic() + self.start_timeout
        self._give_up_at = deadline + LAUNCH_END_S + self.restarts_left() * (self.start_timeout + LAUNCH_END_S)
        while time.monotonic() < deadline and not self._stopping.is_set():
            if proc.poll() is not None:
                raise EngineStartError(self._failure(f"the engine exited with status {proc.returncode}"))
            if ready.is_file():
                url = json.loads(ready.read_text(encoding="utf-8"))["url"]
                if _healthy(url):
                    self.url = url
                    self._up_since, self._give_up_at = time.monotonic(), None
                    log.info("local engine %s running at %s", proc.pid, url)
                    return
            time.sleep(0.1)
        _terminate(proc, 5)
        if self._stopping.is_set():
            self._give_up_at = None
            raise EngineStartError("the engine was stopped while starting")
        raise EngineStartError(self._failure(f"no answer on /health within {self.start_timeout:.0f} s"))

    def _failure(self, what: str, lines: int = 30) -> str:
        try:
            tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        self.last_error = what + (":\n" + "\n".join(tail) if tail else " (it wrote nothing)")
        return self.last_error

    def _watch(self) -> None:
        """Start the engine again on its port when it dies, at most `max_restarts` times; the lock is not
        held while it starts, so `stop()` and `running()` answer meanwhile."""
        while not self._stopping.wait(0.25):
            with self._lock:
                proc = self._proc
            if proc is None or proc.poll() is None:
                continue
            log.error("%s", self._failure(f"the local engine crashed (status {proc.returncode})"))
            if self._up_since and time.monotonic() - self._up_since >= self.healthy_s:
                self.restarts = 0  # it ran well for a good while: this crash starts a new count
            self._up_since = 0.0  # until a launch succeeds
            if self.restarts >= self.max_restarts:
                log.error("not restarting the local engine: %d restarts already", self.restarts)
                self.down_reason = self._one_line(proc.returncode)
                self._give_up_at = None
                with self._lock:
                    self._proc = None
                if self.on_down is not None:
                    self.on_down(self.last_error)
                return
            self.restarts += 1
            self._give_up_at = time.monotonic() + (self.restarts_left() + 1) * (self.start_timeout + LAUNCH_END_S)
            if self.on_restart is not None:
                self.on_restart(f"{_ended(proc.returncode)}; restart {self.restarts} of {self.max_restarts}")
            try:
                self._launch(int(self.url.rsplit(":", 1)[1]))
            except EngineStartError as exc:
                log.error("restarting the local engine failed: %s", exc)
                continue
            if self.on_restarted is not None and not self._stopping.is_set():
                self.on_restarted()

    def _one_line(self, status: int) -> str:
        """Why the engine is down, in one line: how it ended, its restarts, the last error line it wrote."""
        lines = [line.strip() for line in (self.last_error or "").splitlines()[1:] if line.strip()]
        errors = [line for line in lines if _ERROR_LINE.search(line)]
        said = f"; its last error: {errors[-1][:300]}" if errors else ""
        restarts = f"after {self.restarts} restart{'s' if self.restarts != 1 else ''}" if self.restarts else "at once"
        return f"the local engine {_ended(status)} and was given up {restarts}{said}"


def _ended(status: int) -> str:
    """How an engine process ended, from its return code: "was killed by signal 9", "exited with status 1"."""
    return f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"


def remove_leftovers(folder: Optional[Path] = None) -> List[Path]:
    """Remove the temporary folders of engines whose launcher is gone (killed before it could clean up): this
    user's `geovlm-engine-*` folders in `folder` (the system temp folder) whose launcher.json names a process
    that no longer runs. Folders of running launchers, of other users, and without launcher.json are kept.
    Returns the folders removed."""
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob(DIR_PREFIX + "*"):
        try:
            if path.is_symlink() or not path.is_dir() or (hasattr(os, "getuid") and path.stat().st_uid != os.getuid()):
                continue
            owner = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(owner, int) and owner != os.getpid() and not alive(owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d temporary folder(s) of engines whose launcher is gone", len(removed))
    return removed


def _imports_geovlm(python: str, env: Mapping[str, str], cwd: Path) -> bool:
    """Whether `python` finds the geovlm package by itself (an unusable Python says yes: its launch fails
    with its own error)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('geovlm') is None)"
    try:
        done = subprocess.run(  # nosec B603  # a fixed argument list, no shell
            [python, "-c", probe], env=dict(env), cwd=str(cwd), stdin=subprocess.DEVNULL,
            capture_output=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return True
    return done.returncode != 1


def _healthy(url: str) -> bool:
    host, port = url[len("http://") :].rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _terminate(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
