"""Where numba caches the compiled CPU decode step's kernels (`models/cpu_decode_step.py`), chosen before numba
loads.

numba caches a `cache=True` function in NUMBA_CACHE_DIR; where that folder cannot be created or written, it falls
back without a word to the `__pycache__` folder beside the source file (numba/core/caching.py, the locators
`UserProvidedCacheLocator` then `InTreeCacheLocator`), that is into the install folder. So the folder is checked
here first, the way numba checks it (created, then a temporary file written in it): GeoVLM's folder
(`core.cache_paths.numba_cache_dir`, or a NUMBA_CACHE_DIR of the user's, which wins), else a folder of this user's
under the system's temporary folder, else none (the kernels are compiled at each start, not cached), with one line
saying which (`CacheChoice.note`).

numba names a function's cache files for the source file's folder (a subfolder `<parent>_<sha1 of the folder>`)
and keys its index by the source's stamp (the sha256 of its content since numba PR #10659, which numba 0.68
has; before it, its mtime and size), so each checkout, worktree or install of GeoVLM, and each edit of the step's
source, leaves its own files (a few MB), which numba never removes; and its index does not name the source
file. So GeoVLM's compile marker (`marker_name`), left in the subfolder once the kernels are compiled, holds the
source's path, and `prune` removes the kernels of a source that is gone, and the indexes (with their data files)
that numba itself would no longer load.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional

from ..core.cache_paths import KERNEL_MARKER_PREFIX, numba_cache_dir, numba_temp_dir

SET_BY_GEOVLM = "GEOVLM_NUMBA_CACHE_DIR"  # the NUMBA_CACHE_DIR a GeoVLM process chose, so that its child
# processes (the engine `ask --engine local` starts) do not take it for the user's (`use`)


@dataclass(frozen=True)
class CacheChoice:
    """`folder`: the folder numba caches the kernels in, None when none can be written (no caching). `note`: one
    line for the user when it is not the folder asked for (GeoVLM's or the user's NUMBA_CACHE_DIR), else None.
    `owned`: the folder is GeoVLM's (its cache folder or the temporary one), so `prune` may clean it; a
    NUMBA_CACHE_DIR of the user's is not."""

    folder: Optional[Path]
    note: Optional[str] = None
    owned: bool = True


def use(choice: CacheChoice, environ=None) -> None:
    """Hand `choice` to numba through NUMBA_CACHE_DIR of `environ` (default this process's environment, which
    numba reads as it loads and child processes inherit), marked as GeoVLM's choice (SET_BY_GEOVLM); nothing
    where no folder can be written."""
    env = os.environ if environ is None else environ
    if choice.folder is not None:
        env["NUMBA_CACHE_DIR"] = env[SET_BY_GEOVLM] = str(choice.folder)


def unwritable_reason(folder: Path) -> Optional[str]:
    """Why numba could not cache in `folder` (one line), None when it can: numba's own check
    (`_CacheLocator.ensure_cache_path`: the folder created, a temporary file written in it)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def private_temp_folder(root: Optional[Path] = None) -> Path:
    """A folder of this user's for the kernels under `root` (default the system's temporary folder):
    `geovlm-numba-<uid>`, created private (0700) and reused while this user owns it and no one else can write in
    it (numba loads the cached kernels as code), else a new private folder (`tempfile.mkdtemp`). Raises OSError
    where `root` takes no folder."""
    root = Path(root or tempfile.gettempdir())
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = numba_temp_dir(root)  # the name the plugin's Remove looks for (core.cache_paths)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = folder.lstat()
    if (stat.S_ISDIR(info.st_mode) and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            and (uid is None or info.st_uid == uid)):
        return folder
    return Path(tempfile.mkdtemp(prefix="geovlm-numba-", dir=root))


def choose_cache(environ: Optional[Mapping[str, str]] = None, temp_root: Optional[Path] = None) -> CacheChoice:
    """The folder numba should cache the kernels in: the user's NUMBA_CACHE_DIR of `environ` (default this
    process's environment) when set, else GeoVLM's (`numba_cache_dir`), where numba can write it; else
    `private_temp_folder(temp_root)`; else none. The note names the folder asked for, why it is not used and what
    is used instead."""
    env = os.environ if environ is None else environ
    users = env.get("NUMBA_CACHE_DIR")
    if users and users == env.get(SET_BY_GEOVLM):  # inherited from a GeoVLM process (`ask` starting an engine)
        users = None
    wanted = Path(users) if users else numba_cache_dir(env)
    problem = unwritable_reason(wanted)
    if problem is None:
        return CacheChoice(wanted, owned=not users)
    said = f"{'NUMBA_CACHE_DIR' if users else 'the cache folder'} {wanted} cannot be written ({problem})"
    try:
        fallback = private_temp_folder(temp_root)
        fallback_problem = unwritable_reason(fallback)
    except OSError as exc:
        fallback, fallback_problem = None, exc.strerror or str(exc)
    if fallback is not None and fallback_problem is None:
        variable = "NUMBA_CACHE_DIR" if users else "GEOVLM_CACHE"
        return CacheChoice(fallback, f"{said}: the CPU decode step's compiled kernels are cached in {fallback} "
                                     f"instead (set {variable} to a writable folder to keep them)")
    where = fallback or Path(temp_root or tempfile.gettempdir())
    return CacheChoice(None, f"{said}, nor can {where} ({fallback_problem}): the CPU decode step's kernels are "
                             "compiled at each start, not cached")


MARKER_PREFIX = KERNEL_MARKER_PREFIX  # GeoVLM's compile marker: `marker_name` (core.cache_paths, read by the plugin)
KERNEL_FILES = ("cpu_decode_step.*.nbi", "cpu_decode_step.*.nbc")  # numba's files of the step's module
LEGACY_AGE_S = 30 * 86400.0  # a subfolder without a marker (left by a version before markers named the source)
# whose files are all older than this is removed; a live one of that version compiles again once (seconds)


def marker_name(source: Path, numba_version: str) -> str:
    """The compile marker's file name for `source` (the step's .py file) as it is now: keyed by the file's size
    and mtime (numba's stamp before numba PR #10659; since it, numba's stamp is the content's sha256, so a file
    only touched gets a new marker: one compile is announced that numba then loads from its cache) and by numba's
    version."""
    info = Path(source).stat()
    return f"{MARKER_PREFIX}{numba_version}-{info.st_size}-{int(info.st_mtime)}.done"


def _remove(paths) -> List[Path]:
    removed = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:  # another process pruned it first
            continue
        removed.append(path)
    return removed


def _ours(folder: Path) -> List[Path]:
    """The files in `folder` that GeoVLM made there: numba's files of the step's module and compile markers."""
    return [p for pattern in KERNEL_FILES + (f"{MARKER_PREFIX}*.done",) for p in folder.glob(pattern) if p.is_file()]


def _stale_in_live(folder: Path, source: Path, stamp, numba_version: str) -> List[Path]:
    """In the subfolder of a `source` that exists: indexes numba would not load for the source as it is now
    (another stamp or numba version: read with numba's own `IndexDataCacheFile`) with their data files, data files
    no index refers to, and markers of an earlier state of the source."""
    from numba.core.caching import IndexDataCacheFile

    stale = []
    kept_data = set()
    for index in folder.glob(KERNEL_FILES[0]):
        base = index.name[: -len(".nbi")]
        overloads = IndexDataCacheFile(str(folder), base, stamp)._load_index()
        if overloads:
            kept_data.update(overloads.values())
        else:
            stale.append(index)
    stale += [p for p in folder.glob(KERNEL_FILES[1]) if p.name not in kept_data]
    current = marker_name(source, numba_version)
    return stale + [p for p in folder.glob(f"{MARKER_PREFIX}*.done") if p.name != current]


def prune(root: Path, now: Optional[float] = None) -> List[Path]:
    """Remove stale kernels from GeoVLM's numba cache folder `root` (call it only for a folder GeoVLM owns,
    `CacheChoice.owned`); returns the files removed. Only GeoVLM's files in `root`'s subfolders are looked at
    (`<parent>_<40 hex digits>`, numba's names; in them numba's files of `cpu_decode_step` and GeoVLM's compile
    markers): a subfolder whose marker names a source file that is gone (or no longer this subfolder's) loses all
    of them; in one whose source exists, an index that numba would not load for the source as it is (another
    stamp or numba version) goes with its data files, and so do data files no index refers to and markers of an
    earlier state. A subfolder without a marker (made before markers named the source) loses them when all are
    older than LEGACY_AGE_S; so do root-level markers of those versions. An emptied subfolder is removed. Reads a
    few small files per subfolder; OSError where `root` cannot be listed."""
    import numba
    from numba.core.caching import UserProvidedCacheLocator

    now = time.time() if now is None else now
    removed = _remove([p for p in Path(root).glob(f"{MARKER_PREFIX}*.done")
                       if p.is_file() and now - p.stat().st_mtime > LEGACY_AGE_S])
    for folder in Path(root).iterdir():
        parent, _, digest = folder.name.rpartition("_")
        if not (parent and len(digest) == 40 and all(c in "0123456789abcdef" for c in digest)) \
                or folder.is_symlink() or not folder.is_dir():
            continue
        ours = _ours(folder)
        named = [p.read_text(encoding="utf-8").strip() for p in ours if p.name.startswith(MARKER_PREFIX)]
        source = Path(named[0]) if named and named[0] else None
        if source is None:
            stale = ours if ours and all(now - p.stat().st_mtime > LEGACY_AGE_S for p in ours) else []
        elif not source.is_file() or UserProvidedCacheLocator.get_suitable_cache_subpath(str(source)) != folder.name:
            stale = ours
        else:
            stamp = UserProvidedCacheLocator(prune, str(source)).get_source_stamp()
            stale = _stale_in_live(folder, source, stamp, numba.__version__)
        removed += _remove(stale)
        if stale:
            with contextlib.suppress(OSError):  # only where nothing else is left
                folder.rmdir()
    return removed
