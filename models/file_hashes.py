"""Facts read from files once (sha256 digests, an ONNX graph's metadata) and kept beside the files they
describe, keyed by each file's size and mtime.

A start of the engine hashes the checkpoint's vision weights (to match its ONNX export) and the `.onnx` file (to
key the encoding cache) and reads the export's metadata: most of a cold load when done each time. The values go
into `geovlm-hashes.json` in the model folder (in `$GEOVLM_CACHE/hashes/` when that folder is read-only), each
under a name with the (file name, size in bytes, mtime in ns) of every file it covers; a file changed in size or
mtime makes its value be computed again. A store that cannot be read or written is ignored (the value is
computed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, List, Sequence

from ..core.cache_paths import cache_dir  # where GeoVLM keeps generated files (one rule for engine and plugin)

log = logging.getLogger(__name__)
HASHES_FILE = "geovlm-hashes.json"


def file_sha256(path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _store(folder: Path) -> Path:
    folder = Path(folder).resolve()
    if os.access(folder, os.W_OK):
        return folder / HASHES_FILE
    name = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return cache_dir() / "hashes" / f"{name}.json"


def _stamp(paths: Sequence[Path]) -> List[list]:
    stamps = []
    for p in sorted(Path(p) for p in paths):
        st = p.stat()
        stamps.append([p.name, st.st_size, st.st_mtime_ns])
    return stamps


def _read(store: Path) -> dict:
    """The store's entries; empty when it is missing or unreadable."""
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def cached_value(name: str, paths: Sequence, compute: Callable[[], Any], folder) -> Any:
    """What `compute()` gives for `paths` (a JSON value), read from the store of `folder` when it holds one under
    `name` for these files at their present size and mtime; computed and stored otherwise. OSError from `paths`'
    stat and whatever `compute` raises propagate."""
    stamp = _stamp(paths)
    store = _store(Path(folder))
    entry = _read(store).get(name)
    if isinstance(entry, dict) and entry.get("files") == stamp and "value" in entry:
        return entry["value"]
    value = compute()
    known = _read(store)  # read again: `compute` may have stored values of its own meanwhile
    known[name] = {"files": stamp, "value": value}
    scratch = store.with_name(f"{store.name}.tmp-{os.getpid()}")
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        scratch.write_text(json.dumps(known, indent=1))
        os.replace(scratch, store)
    except OSError as exc:
        with contextlib.suppress(OSError):
            scratch.unlink(missing_ok=True)
        log.info("could not keep %s in %s (%s)", name, store, exc)
    return value
