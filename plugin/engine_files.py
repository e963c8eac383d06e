"""What the local engine leaves on disk: *Remove* deletes what only the plugin's engine uses, and names what it
keeps because any GeoVLM on this machine shares it.

Deleted: the venv the set-up made, a venv moved aside by a "Set up again" that QGIS did not see end
(`<venv>.previous`), and numba's compiled kernels of the code in those venvs: the subfolders of GeoVLM's numba
cache (`core.cache_paths.numba_cache_dir`, and the temporary folder the engine falls back to,
`numba_temp_dir`) whose compile marker names a source file inside them (`kernel_source`). Once the venv is gone no
engine loads them (the next engine's `prune` would delete them too).

Kept, and listed with their sizes: GeoVLM's cache folder is one per user (`$GEOVLM_CACHE`, else
`~/.cache/geovlm`), shared by the plugin's engine and a command-line GeoVLM (`geovlm serve`, `ask`), which
cannot be told apart by what they wrote there. So `encoders` (ONNX exports of the vision encoders of read-only
model folders: minutes each to make again, with torch) and `hashes` (digests of read-only model folders' files)
stay, and so do the kernels of other GeoVLM installs (their markers name sources elsewhere; unmarked ones, of
versions before markers, cannot be told apart). The set-up log, the settings, answers and a NUMBA_CACHE_DIR of
the user's stay too, unlisted.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

from qgis.core import QgsFileUtils

from ..core.cache_paths import kernel_source

PREVIOUS_SUFFIX = ".previous"  # a working venv kept aside during "Set up again" (engine_setup)
SIZE_BUDGET_S = 1.0  # counting a folder's bytes stops after this long (a cold disk, a huge venv): "size unknown"


class EngineFolder(NamedTuple):
    """One folder *Remove* deletes: `path`, and `what` it holds in words."""

    path: Path
    what: str


def _venvs(venv: Path) -> List[Path]:
    return [venv, venv.with_name(venv.name + PREVIOUS_SUFFIX)]


def _kernel_folders(kernel_roots: Sequence[Path]) -> List[Path]:
    """numba's cache subfolders under each of `kernel_roots` (links neither listed nor followed)."""
    found = []
    for root in kernel_roots:
        if root.is_dir() and not root.is_symlink():
            found += sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    return found


def _of_venvs(folder: Path, venvs: Sequence[Path]) -> bool:
    """True when `folder`'s kernels were compiled from a source file inside one of `venvs`."""
    source = kernel_source(folder)
    return source is not None and any(source.is_relative_to(v) for v in venvs)


def engine_folders(venv: Path, kernel_roots: Sequence[Path]) -> List[EngineFolder]:
    """The folders only the local engine uses that exist now, in the order *Remove* deletes them: the venv, a venv
    moved aside (`<venv>.previous`), and the subfolders of numba's cache folders `kernel_roots` (GeoVLM's, and its
    temporary fallback) whose kernels were compiled from the code of those venvs. A symbolic link is never listed
    (it would not be GeoVLM's folder: `shutil.rmtree` refuses it anyway)."""
    venvs = _venvs(venv)
    found = [EngineFolder(venv, "the engine's Python environment"),
             EngineFolder(venvs[1], "an earlier environment kept aside")]
    found = [f for f in found if f.path.is_dir() and not f.path.is_symlink()]
    return found + [EngineFolder(k, "numba's compiled kernels of this engine (made again on its first question)")
                    for k in _kernel_folders(kernel_roots) if _of_venvs(k, venvs)]


def shared_folders(cache: Path, venv: Path, kernel_roots: Sequence[Path]) -> List[EngineFolder]:
    """What *Remove* keeps of GeoVLM's cache folder `cache`, with why, as they exist now: `encoders` and `hashes`
    (shared by every GeoVLM of this user, the command line's too) and numba's kernels in `kernel_roots` of other
    GeoVLM installs (not compiled from `venv`'s code)."""
    shared = "shared with any GeoVLM on this machine (the command line too): kept"
    found = [EngineFolder(cache / "encoders", f"vision encoders exported to ONNX (minutes each to make again), "
                                              f"{shared}"),
             EngineFolder(cache / "hashes", f"digests of read-only model folders' files, {shared}")]
    found = [f for f in found if f.path.is_dir() and not f.path.is_symlink()]
    venvs = _venvs(venv)
    for folder in _kernel_folders(kernel_roots):
        if not _of_venvs(folder, venvs):
            source = kernel_source(folder)
            found.append(EngineFolder(folder, f"numba's compiled kernels of {source or 'another GeoVLM version'}, "
                                              "another GeoVLM install's: kept"))
    return found


def folder_size(path: Path, budget_s: float = SIZE_BUDGET_S) -> Optional[int]:
    """The bytes of the files under `path` (links counted as links, never followed); None when counting took
    longer than `budget_s` seconds (a venv holds ~50 000 files: 0.3 s from a warm disk cache). Unreadable
    entries are skipped."""
    deadline = time.monotonic() + budget_s
    total, folders = 0, [str(path)]
    while folders:
        if time.monotonic() > deadline:
            return None
        try:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            folders.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def describe(folders: List[EngineFolder], budget_s: float = SIZE_BUDGET_S) -> str:
    """One line a folder for the confirmation: "• <path> (<size>): <what>", the size from
    `QgsFileUtils.representFileSize` ("size unknown" past `budget_s` seconds of counting, for all folders)."""
    deadline = time.monotonic() + budget_s
    lines = []
    for folder in folders:
        size = folder_size(folder.path, max(0.0, deadline - time.monotonic()))
        shown = QgsFileUtils.representFileSize(size) if size is not None else "size unknown"
        lines.append(f"• {folder.path} ({shown}): {folder.what}")
    return "\n".join(lines)


def remove_folders(folders: List[EngineFolder], emptied: Sequence[Path] = ()) -> List[Path]:
    """Delete each folder (symbolic links inside are unlinked, never followed), then each of `emptied` (numba's
    cache folders) if nothing is left in it; returns the folders still there (a file in use on Windows, no
    permission)."""
    for folder in folders:
        shutil.rmtree(folder.path, ignore_errors=True)
    for root in emptied:
        try:
            root.rmdir()  # only an empty folder: what other installs compiled stays
        except OSError:
            pass
    return [folder.path for folder in folders if folder.path.exists()]
