"""Where GeoVLM keeps the files it generates outside a model folder: the one rule, for the engine (which writes
there) and the QGIS plugin (whose *Remove* of the local engine deletes what the engine made there).

Standard library only: the plugin reads these paths without importing numba or torch.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional

KERNEL_MARKER_PREFIX = "geovlm-decode-step-"  # GeoVLM's compile marker in a numba cache subfolder, naming the
# source its kernels were compiled from (`models.numba_cache.marker_name`)


def cache_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """GeoVLM's cache folder: `$GEOVLM_CACHE` (of `environ`, default this process's environment), else
    `~/.cache/geovlm`. The local engine gets the plugin's environment (`engine.launcher.clean_environment` keeps
    GEOVLM_CACHE and HOME), so both sides name the same folder."""
    env = os.environ if environ is None else environ
    return Path(env.get("GEOVLM_CACHE") or Path.home() / ".cache" / "geovlm")


def numba_cache_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """GeoVLM's folder for numba's compiled kernels (the CPU decode step, `models/cpu_decode_step.py`):
    `cache_dir(environ) / "numba"`. The engine hands it to numba as NUMBA_CACHE_DIR unless the user set that
    variable (a user's NUMBA_CACHE_DIR is theirs: GeoVLM never deletes it)."""
    return cache_dir(environ) / "numba"


def numba_temp_dir(temp_root: Optional[Path] = None) -> Path:
    """The folder the engine caches numba's kernels in when `numba_cache_dir` cannot be written: this user's
    `geovlm-numba-<uid>` under `temp_root` (default the system's temporary folder). Only its name: nothing is
    created here (`models.numba_cache.private_temp_folder` makes it, private)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    return Path(temp_root or tempfile.gettempdir()) / f"geovlm-numba-{uid if uid is not None else 'user'}"


def kernel_source(folder: Path) -> Optional[Path]:
    """The source file a numba cache subfolder's kernels were compiled from, as GeoVLM's compile marker in it names
    it (a `KERNEL_MARKER_PREFIX` file holding the path); None without a readable marker (numba's own files do not
    name their source)."""
    try:
        markers = sorted(folder.glob(f"{KERNEL_MARKER_PREFIX}*.done"))
        named = markers[0].read_text(encoding="utf-8").strip() if markers else ""
    except (OSError, UnicodeDecodeError):
        return None
    return Path(named) if named else None
