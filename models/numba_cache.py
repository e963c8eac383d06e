"""Where numba caches the compiled CPU decode step's kernels (`models/cpu_decode_step.py`), chosen before numba
loads.

numba caches a `cache=True` function in NUMBA_CACHE_DIR; where that folder cannot be created or written, it falls
back without a word to the `__pycache__` folder beside the source file (numba/core/caching.py, the locators
`UserProvidedCacheLocator` then `InTreeCacheLocator`), that is into the install folder. So the folder is checked
here first, the way numba checks it (created, then a temporary file written in it): GeoVLM's folder
(`core.cache_paths.numba_cache_dir`, or a NUMBA_CACHE_DIR of the user's, which wins), else a folder of this user's
under the system's temporary folder, else none (the kernels are compiled at each start, not cached), with one line
saying which (`CacheChoice.note`).
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from ..core.cache_paths import numba_cache_dir


@dataclass(frozen=True)
class CacheChoice:
    """`folder`: the folder numba caches the kernels in, None when none can be written (no caching). `note`: one
    line for the user when it is not the folder asked for (GeoVLM's or the user's NUMBA_CACHE_DIR), else None."""

    folder: Optional[Path]
    note: Optional[str] = None


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
    folder = root / f"geovlm-numba-{uid if uid is not None else 'user'}"
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
    wanted = Path(users) if users else numba_cache_dir(env)
    problem = unwritable_reason(wanted)
    if problem is None:
        return CacheChoice(wanted)
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
