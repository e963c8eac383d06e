"""Where the compiled CPU step's kernels are cached (models/numba_cache.py): never in the install folder, which is
numba's own fallback for a cache folder it cannot write, and one line saying what is used instead."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from geovlm.models.numba_cache import CacheChoice, choose_cache, private_temp_folder, use

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
    assert f"kept in {fallback}" in done.stdout  # the compile's announcement names the folder used
    paths = next(line for line in lines if line.startswith("paths ")).split()[1:]
    assert len(paths) == 1 and Path(paths[0]).parent == fallback, paths
    assert list(Path(paths[0]).glob("cpu_decode_step._decode-*.nbi"))  # really cached there
    assert [m.read_text() for m in fallback.glob("*/geovlm-decode-step-*.done")] == [str(MODELS / "cpu_decode_step.py")]
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
    assert choose_cache({"NUMBA_CACHE_DIR": str(writable)}, temp_root=tmp_path) == CacheChoice(writable, owned=False)
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


FAKE_STEP = "from numba import njit\n\n\n@njit(cache=True)\ndef _products(x):\n    return x + 1\n"
LOAD_AND_RUN = ("import importlib.util, sys\n"
                "spec = importlib.util.spec_from_file_location('cpu_decode_step', sys.argv[1])\n"
                "module = importlib.util.module_from_spec(spec)\n"
                "spec.loader.exec_module(module)\n"
                "print(module._products(1))\n")


def _cache_entry(root: Path, checkout: Path):
    """A real numba cache entry in `root` of a `models/cpu_decode_step.py` in `checkout` (numba names the files for
    the module and keys the subfolder by the source's folder, as for GeoVLM's step), compiled in a child process,
    and GeoVLM's compile marker beside it, naming the source. Returns (source, subfolder)."""
    import numba
    from numba.core.caching import UserProvidedCacheLocator

    from geovlm.models.numba_cache import marker_name

    source = checkout / "models" / "cpu_decode_step.py"
    source.parent.mkdir(parents=True, exist_ok=True)
    if not source.exists():
        source.write_text(FAKE_STEP)
    done = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(source)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, NUMBA_CACHE_DIR=str(root)))
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr
    folder = root / UserProvidedCacheLocator.get_suitable_cache_subpath(str(source))
    (folder / marker_name(source, numba.__version__)).write_text(str(source))
    return source, folder


def _names(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_stale_kernels_are_pruned_and_nothing_else(tmp_path):
    """Two checkouts' real cache entries: nothing is pruned while both are as compiled; a removed checkout loses
    its files (a file not GeoVLM's stays); an edited source loses its index and data (numba would not load them)
    and its old marker, and keeps what is compiled again after the edit."""
    pytest.importorskip("numba")
    import shutil

    from geovlm.models.numba_cache import prune

    root = tmp_path / "numba"
    _, old = _cache_entry(root, tmp_path / "old-checkout")
    live_source, live = _cache_entry(root, tmp_path / "live-checkout")
    assert old != live and [n for n in _names(old) if n.endswith(".nbi")] == ["cpu_decode_step._products-4.py"
                                                                              f"{sys.version_info[0]}"
                                                                              f"{sys.version_info[1]}.nbi"]
    old_files = _names(old)
    (old / "notes.txt").write_text("not GeoVLM's")
    others = root / f"other_{'0' * 40}"
    others.mkdir()
    (others / "cpu_other._f-1.py311.nbi").write_text("another module's")
    (root / "readme.txt").write_text("not GeoVLM's")
    live_files = _names(live)

    assert prune(root) == []
    shutil.rmtree(tmp_path / "old-checkout")
    removed = prune(root)
    assert sorted(p.name for p in removed) == old_files and len(old_files) == 3  # index, data, marker
    assert all(p.parent == old for p in removed) and _names(old) == ["notes.txt"]
    assert _names(live) == live_files and _names(others) == ["cpu_other._f-1.py311.nbi"]
    assert (root / "readme.txt").is_file()

    live_source.write_text(FAKE_STEP + "\n# edited: another stamp\n")
    removed = prune(root)
    assert sorted(p.name for p in removed) == live_files and not live.exists()  # emptied, so removed
    _cache_entry(root, tmp_path / "live-checkout")  # compiled again for the edited source
    again = _names(live)
    assert prune(root) == [] and _names(live) == again and len(again) == 3


def test_folders_of_versions_before_markers_go_only_when_old(tmp_path):
    """A subfolder without GeoVLM's marker cannot say its source: removed only once all its files are older than
    LEGACY_AGE_S; root-level markers of those versions likewise."""
    from geovlm.models.numba_cache import LEGACY_AGE_S, prune

    now = 1_800_000_000.0
    old, recent = tmp_path / f"models_{'a' * 40}", tmp_path / f"models_{'b' * 40}"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "cpu_decode_step._decode-211.py311.nbi").write_bytes(b"x")
        (folder / "cpu_decode_step._decode-211.py311.1.nbc").write_bytes(b"x")
    old_marker, new_marker = tmp_path / "geovlm-decode-step-0.68.1-1-2.done", tmp_path / "geovlm-decode-step-x.done"
    old_marker.touch()
    new_marker.touch()
    for path in [*old.iterdir(), old_marker]:
        os.utime(path, (now - LEGACY_AGE_S - 60, now - LEGACY_AGE_S - 60))
    for path in [*recent.iterdir(), new_marker]:
        os.utime(path, (now - 60, now - 60))
    removed = prune(tmp_path, now=now)
    assert sorted(p.name for p in removed) == sorted([old_marker.name, *(n for n in _names(recent))])
    assert not old.exists() and len(_names(recent)) == 2 and new_marker.exists()


def test_only_geovlms_own_folder_is_pruned(tmp_path, monkeypatch):
    """`prune_cache` (run after the preload) prunes GeoVLM's folder, never a NUMBA_CACHE_DIR of the user's."""
    pytest.importorskip("numba")
    from geovlm.models import cpu_decode_step

    root = tmp_path / "numba"
    gone = root / f"models_{'c' * 40}"
    gone.mkdir(parents=True)
    (gone / "geovlm-decode-step-0.68.1-1-2.done").write_text(str(tmp_path / "gone" / "cpu_decode_step.py"))
    (gone / "cpu_decode_step._decode-1.py311.nbi").write_bytes(b"x")
    monkeypatch.setattr(cpu_decode_step, "NUMBA_CACHE", CacheChoice(root, owned=False))
    assert cpu_decode_step.prune_cache() == [] and len(_names(gone)) == 2
    monkeypatch.setattr(cpu_decode_step, "NUMBA_CACHE", CacheChoice(root))
    assert len(cpu_decode_step.prune_cache()) == 2 and not gone.exists()


def test_pruning_never_raises_when_numbas_cache_internals_change(tmp_path, monkeypatch, caplog):
    """Pruning is housekeeping after the preload: numba's cache internals it reads (a private index reader)
    changing in a numba release gives a DEBUG line, not a traceback from the preload thread."""
    pytest.importorskip("numba")
    from geovlm.models import cpu_decode_step, numba_cache

    def changed(root, now=None):
        raise AttributeError("type object 'IndexDataCacheFile' has no attribute '_load_index'")

    monkeypatch.setattr(numba_cache, "prune", changed)
    monkeypatch.setattr(cpu_decode_step, "NUMBA_CACHE", CacheChoice(tmp_path / "numba"))
    with caplog.at_level("DEBUG", logger=cpu_decode_step.log.name):
        assert cpu_decode_step.prune_cache() == []
    assert "_load_index" in caplog.text


def test_a_folder_a_geovlm_parent_chose_is_not_taken_for_the_users(tmp_path):
    """`ask --engine local` imports the step's module and then starts the engine with its environment: the
    NUMBA_CACHE_DIR it set there is GeoVLM's (pruned), not the user's; one the user set stays the user's."""
    env = {"GEOVLM_CACHE": str(tmp_path / "cache")}
    use(choose_cache(env), env)
    assert env["NUMBA_CACHE_DIR"] == str(tmp_path / "cache" / "numba")
    assert choose_cache(env) == CacheChoice(tmp_path / "cache" / "numba", owned=True)
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")  # the user's own, set afterwards
    assert choose_cache(env) == CacheChoice(tmp_path / "mine", owned=False)
