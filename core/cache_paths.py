"""Where GeoVLM keeps the files it generates outside a model folder: the one rule, for the engine (which writes
there) and the QGIS plugin (whose *Remove* of the local engine deletes what the engine made there).

Standard library only: the plugin reads these paths without importing numba or torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional


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
