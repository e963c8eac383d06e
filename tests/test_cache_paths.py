"""One rule for GeoVLM's cache folders (`core.cache_paths`): the engine hands numba the folder the plugin's
*Remove* deletes."""
import os
import subprocess
import sys
from pathlib import Path

from geovlm.core.cache_paths import cache_dir, numba_cache_dir


def test_the_cache_is_geovlm_cache_else_the_users_cache_folder(tmp_path):
    assert cache_dir({"GEOVLM_CACHE": str(tmp_path)}) == tmp_path
    assert cache_dir({"GEOVLM_CACHE": ""}) == Path.home() / ".cache" / "geovlm"
    assert numba_cache_dir({}) == Path.home() / ".cache" / "geovlm" / "numba"


def test_the_engine_gives_numba_the_folder_the_plugin_removes(tmp_path):
    """The engine's module sets NUMBA_CACHE_DIR (when the user did not) to `numba_cache_dir()`; a user's own
    NUMBA_CACHE_DIR wins."""
    probe = "import os, geovlm.models.cpu_decode_step; print(os.environ['NUMBA_CACHE_DIR'])"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["GEOVLM_CACHE"] = str(tmp_path / "cache")
    given = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True,
                           timeout=120).stdout.strip()
    assert Path(given) == numba_cache_dir(env) == tmp_path / "cache" / "numba"
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    given = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True,
                           timeout=120).stdout.strip()
    assert Path(given) == tmp_path / "mine"
