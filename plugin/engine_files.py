"""What the local engine leaves on disk, which *Remove* deletes: the venv the set-up made, a venv moved aside
by a "Set up again" that QGIS did not see end (`<venv>.previous`), and GeoVLM's cache of numba's compiled
kernels (`core.cache_paths.numba_cache_dir`, the folder the engine gives numba). Nothing else: the set-up log,
the settings, answers and a NUMBA_CACHE_DIR of the user's stay.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import List, NamedTuple, Optional

from qgis.core import QgsFileUtils

PREVIOUS_SUFFIX = ".previous"  # a working venv kept aside during "Set up again" (engine_setup)
SIZE_BUDGET_S = 1.0  # counting a folder's bytes stops after this long (a cold disk, a huge venv): "size unknown"


class EngineFolder(NamedTuple):
    """One folder *Remove* deletes: `path`, and `what` it holds in words."""

    path: Path
    what: str


def engine_folders(venv: Path, kernel_cache: Path) -> List[EngineFolder]:
    """The folders of the local engine that exist now, in the order *Remove* deletes them: the venv, a venv
    moved aside (`<venv>.previous`), numba's kernel cache `kernel_cache`. A symbolic link is never listed (it
    would not be GeoVLM's folder: `shutil.rmtree` refuses it anyway)."""
    found = [EngineFolder(venv, "the engine's Python environment"),
             EngineFolder(venv.with_name(venv.name + PREVIOUS_SUFFIX), "an earlier environment kept aside"),
             EngineFolder(kernel_cache, "numba's compiled kernels (made again on the next first question)")]
    return [f for f in found if f.path.is_dir() and not f.path.is_symlink()]


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


def remove_folders(folders: List[EngineFolder]) -> List[Path]:
    """Delete each folder (symbolic links inside are unlinked, never followed); returns those still there (a
    file in use on Windows, no permission)."""
    for folder in folders:
        shutil.rmtree(folder.path, ignore_errors=True)
    return [folder.path for folder in folders if folder.path.exists()]
