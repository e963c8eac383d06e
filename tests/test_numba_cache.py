"""Where the compiled CPU step's kernels are cached (models/numba_cache.py): never in the install folder, which is
numba's own fallback for a cache folder it cannot write, and one line saying what is used instead."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from geovlm.models.numba_cache import CacheChoice, choose_cache, private_temp_folder

MODELS = Path(__file__).resolve().parents[1] / "models"


def _child(code: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "GEOVLM_CACHE", "TMPDIR")}
    env.update(extra)
    return env


def test_an_unwritable_geovlm_cache_caches_in_a_temporary_folder_said_in_one_line(tmp_path):
    """GEOVLM_CACHE under a regular file (unwritable even for root): numba would cache beside the source file,
    in the install folder, while the announcement named the unusable folder. numba is imported first here (as a
    test runner or another library may do), so the module must set numba's setting itself, not only the
    variable."""
    pytest.importorskip("numba")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    temp = tmp_path / "tmp"
    temp.mkdir()
    code = (
        "import logging, sys\n"
        "import numba\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s', stream=sys.stdout)\n"
        "from numba.core.dispatcher import Dispatcher\n"
        "from geovlm.models import cpu_decode_step as c\n"
        "c.announce_compile()\n"
        "c.preload()\n"
        "kernels = [v for v in vars(c).values() if isinstance(v, Dispatcher)]\n"
        "print('paths', *sorted({k._cache._cache_path for k in kernels}))\n"
    )
    done = _child(code, _env(tmp_path, GEOVLM_CACHE=str(blocker / "sub"), TMPDIR=str(temp)))
    fallback = temp / f"geovlm-numba-{os.getuid()}"
    lines = done.stdout.splitlines()
    notes = [line for line in lines if "cannot be written" in line]
    assert notes == [f"the cache folder {blocker / 'sub' / 'numba'} cannot be written (Not a directory): the CPU "
                     f"decode step's compiled kernels are cached in {fallback} instead (set GEOVLM_CACHE to a "
                     "writable folder to keep them)"]
    assert all(str(blocker) not in line for line in lines if line not in notes)  # nothing else names it
    paths = next(line for line in lines if line.startswith("paths ")).split()[1:]
    assert len(paths) == 1 and Path(paths[0]).parent == fallback, paths
    assert list(Path(paths[0]).glob("cpu_decode_step._decode-*.nbi"))  # really cached there
    assert list(fallback.glob("geovlm-decode-step-*.done"))
    assert oct(fallback.stat().st_mode & 0o777) == "0o700"


def test_without_any_writable_folder_nothing_is_cached_and_that_is_said(tmp_path):
    """Neither GeoVLM's folder nor a temporary one can be written: the kernels get numba's NullCache (compiled at
    each start), not numba's fallback beside the source file; no compile marker is named."""
    pytest.importorskip("numba")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = (
        "import logging, sys, tempfile\n"
        f"tempfile.tempdir = {str(blocker / 'tmp')!r}\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s', stream=sys.stdout)\n"
        "from numba.core.caching import NullCache\n"
        "from numba.core.dispatcher import Dispatcher\n"
        "from geovlm.models import cpu_decode_step as c\n"
        "c.announce_compile()\n"
        "kernels = [v for v in vars(c).values() if isinstance(v, Dispatcher)]\n"
        "print('kernels', len(kernels), all(isinstance(k._cache, NullCache) for k in kernels), c.compile_marker())\n"
    )
    done = _child(code, _env(tmp_path, GEOVLM_CACHE=str(blocker / "sub")))
    lines = done.stdout.splitlines()
    assert lines[0] == (f"the cache folder {blocker / 'sub' / 'numba'} cannot be written (Not a directory), nor can "
                        f"{blocker / 'tmp'} (Not a directory): the CPU decode step's kernels are compiled at each "
                        "start, not cached")
    count, null, marker = lines[1].split()[1:]
    assert int(count) >= 5 and null == "True" and marker == "None"
    assert len(lines) == 2


def test_a_users_unwritable_numba_cache_dir_is_named_as_theirs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    choice = choose_cache({"NUMBA_CACHE_DIR": str(blocker / "numba")}, temp_root=tmp_path)
    assert choice.folder == tmp_path / f"geovlm-numba-{os.getuid()}"
    assert choice.note.startswith(f"NUMBA_CACHE_DIR {blocker / 'numba'} cannot be written")
    assert choice.note.endswith("(set NUMBA_CACHE_DIR to a writable folder to keep them)")
    writable = tmp_path / "mine"
    assert choose_cache({"NUMBA_CACHE_DIR": str(writable)}, temp_root=tmp_path) == CacheChoice(writable)
    assert writable.is_dir()


def test_a_temporary_folder_others_can_write_is_not_reused(tmp_path):
    """numba loads cached kernels as code: a shared folder of the predictable name that another user made, or
    anyone can write, is not taken; a new private one is."""
    shared = tmp_path / f"geovlm-numba-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    other = private_temp_folder(tmp_path)
    assert other != shared and other.parent == tmp_path and oct(other.stat().st_mode & 0o777) == "0o700"
    shared.chmod(0o700)
    assert private_temp_folder(tmp_path) == shared
