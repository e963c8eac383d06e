"""GeoVLM's settings, kept in `QgsSettings` under `geovlm/` (the user's QGIS profile).

One `EngineSettings` value holds what the plugin needs to reach an engine and to render for it; `load()` reads
it (any thread: each call opens its own `QgsSettings`) and `save()` writes it. Secrets never live here: an
endpoint names a `QgsAuthManager` configuration id (`authcfg`), the key stays in QGIS's encrypted auth store.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional

from qgis.core import QgsApplication, QgsSettings

PREFIX = "geovlm/"
MODES = ("local", "remote")
SETUP_MARKER = "geovlm-setup.json"  # written into the venv when "Set up the local engine…" finished
# Where the user finds the set-up and GeoVLM's Options page, for messages: QGIS puts the entries a plugin adds with
# `iface.addPluginToMenu("&GeoVLM", action)` under its Plugins menu (ui/engine_menu.py; a test keeps them equal).
SETUP_MENU_PATH = "Plugins ▸ GeoVLM ▸ Set up the local engine…"
OPTIONS_PATH = "Settings ▸ Options ▸ GeoVLM"

# The keys, one place; the dock reads the rendering keys through `load()` (render_width, render_height,
# render_dpr) or directly with these names.
KEY_MODE = PREFIX + "engine/mode"
KEY_ENDPOINTS = PREFIX + "engine/endpoints"  # JSON: [{"url": ..., "authcfg": ...}, ...]
KEY_MODEL_DIR = PREFIX + "engine/model_dir"
KEY_FAMILY = PREFIX + "engine/family"
KEY_PYTHON = PREFIX + "engine/python"
KEY_TORCH_BUILD = PREFIX + "engine/torch_build"  # "Set up the local engine…": "auto", "cpu" or "cuda"
TORCH_BUILDS = ("auto", "cpu", "cuda")
KEY_REQUEST_TIMEOUT = PREFIX + "engine/request_timeout_s"
KEY_START_TIMEOUT = PREFIX + "engine/start_timeout_s"
KEY_RENDER_WIDTH = PREFIX + "render/width"
KEY_RENDER_HEIGHT = PREFIX + "render/height"
KEY_RENDER_DPR = PREFIX + "render/device_pixel_ratio"
KEY_RENDER_FROM_CANVAS = PREFIX + "render/from_canvas"


@dataclass(frozen=True)
class Endpoint:
    """A remote engine: its URL (the part before /v1) and an optional `QgsAuthManager` config id."""

    url: str
    authcfg: str = ""


@dataclass(frozen=True)
class EngineSettings:
    """What reaches and feeds an engine.

    mode: "local" (the plugin's own engine, started on demand) or "remote" (the `endpoints`).
    model_dir: checkpoint folder of the local engine; "" serves the demo model (a random stand-in).
    family: model family name ("" = read from the engine's /v1/models).
    python: the Python that runs the local engine; "" = the one "Set up the local engine…" made.
    request_timeout_s: bound on the connect and on each wait for data of one request, in seconds.
    start_timeout_s: how long the local engine may take to answer /health after its start, in seconds.
    render_width, render_height: the size in pixels of the image rendered for the model when the view's own
    size is not used (`render_from_canvas` False); render_dpr: its device pixel ratio.
    """

    mode: str = "local"
    endpoints: List[Endpoint] = field(default_factory=list)
    model_dir: str = ""
    family: str = ""
    python: str = ""
    request_timeout_s: float = 300.0
    start_timeout_s: float = 600.0
    render_width: int = 1024
    render_height: int = 768
    render_dpr: float = 1.0
    render_from_canvas: bool = True

    def with_changes(self, **changes) -> EngineSettings:
        return replace(self, **changes)


def load(settings: Optional[QgsSettings] = None) -> EngineSettings:
    """The stored settings, defaults for what is missing or unreadable."""
    s = settings or QgsSettings()
    default = EngineSettings()
    mode = str(s.value(KEY_MODE, default.mode))
    return EngineSettings(
        mode=mode if mode in MODES else default.mode,
        endpoints=_endpoints(s.value(KEY_ENDPOINTS, "[]")),
        model_dir=str(s.value(KEY_MODEL_DIR, "") or ""),
        family=str(s.value(KEY_FAMILY, "") or ""),
        python=str(s.value(KEY_PYTHON, "") or ""),
        request_timeout_s=_number(s.value(KEY_REQUEST_TIMEOUT), default.request_timeout_s, float),
        start_timeout_s=_number(s.value(KEY_START_TIMEOUT), default.start_timeout_s, float),
        render_width=_number(s.value(KEY_RENDER_WIDTH), default.render_width, int),
        render_height=_number(s.value(KEY_RENDER_HEIGHT), default.render_height, int),
        render_dpr=_number(s.value(KEY_RENDER_DPR), default.render_dpr, float),
        render_from_canvas=str(s.value(KEY_RENDER_FROM_CANVAS, "true")).lower() in ("true", "1"),
    )


def save(value: EngineSettings, settings: Optional[QgsSettings] = None) -> None:
    """Store `value`; raises ValueError for a mode other than local/remote or an endpoint that is not http(s)."""
    if value.mode not in MODES:
        raise ValueError(f"engine mode must be one of {MODES}, not {value.mode!r}")
    for endpoint in value.endpoints:
        check_url(endpoint.url)
    s = settings or QgsSettings()
    s.setValue(KEY_MODE, value.mode)
    s.setValue(KEY_ENDPOINTS, json.dumps([{"url": e.url, "authcfg": e.authcfg} for e in value.endpoints]))
    s.setValue(KEY_MODEL_DIR, value.model_dir)
    s.setValue(KEY_FAMILY, value.family)
    s.setValue(KEY_PYTHON, value.python)
    s.setValue(KEY_REQUEST_TIMEOUT, float(value.request_timeout_s))
    s.setValue(KEY_START_TIMEOUT, float(value.start_timeout_s))
    s.setValue(KEY_RENDER_WIDTH, int(value.render_width))
    s.setValue(KEY_RENDER_HEIGHT, int(value.render_height))
    s.setValue(KEY_RENDER_DPR, float(value.render_dpr))
    s.setValue(KEY_RENDER_FROM_CANVAS, "true" if value.render_from_canvas else "false")


def torch_build(settings: Optional[QgsSettings] = None) -> str:
    """The torch build last picked in "Set up the local engine…": "auto" (the default, also for an unknown
    stored value), "cpu" or "cuda"."""
    value = str((settings or QgsSettings()).value(KEY_TORCH_BUILD, "auto") or "auto")
    return value if value in TORCH_BUILDS else "auto"


def set_torch_build(value: str, settings: Optional[QgsSettings] = None) -> None:
    """Remember the torch build for the next set-up; raises ValueError for a value not in `TORCH_BUILDS`."""
    if value not in TORCH_BUILDS:
        raise ValueError(f"the torch build must be one of {TORCH_BUILDS}, not {value!r}")
    (settings or QgsSettings()).setValue(KEY_TORCH_BUILD, value)


def check_url(url: str) -> str:
    """`url` stripped; raises ValueError unless it is an http:// or https:// URL with a host."""
    from urllib.parse import urlsplit

    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"an engine URL is http://host:port or https://host, not {url!r}")
    return url


def data_dir() -> Path:
    """GeoVLM's folder in the active QGIS profile (created on demand by whoever writes there)."""
    return Path(QgsApplication.qgisSettingsDirPath()) / "geovlm"


def venv_dir() -> Path:
    """The virtual environment "Set up the local engine…" makes, outside QGIS's own Python."""
    return data_dir() / "engine-venv"


def venv_python(venv: Optional[Path] = None) -> Path:
    """The interpreter of a venv (Scripts\\python.exe on Windows, bin/python elsewhere)."""
    venv = venv or venv_dir()
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def engine_python(value: Optional[EngineSettings] = None) -> str:
    """The Python that runs the local engine: the configured one, else the venv's once its set-up finished;
    "" when neither exists (the local engine is then not set up)."""
    value = value or load()
    if value.python:
        return value.python if Path(value.python).is_file() else ""
    python = venv_python()
    return str(python) if python.is_file() and (venv_dir() / SETUP_MARKER).is_file() else ""


def _endpoints(raw) -> List[Endpoint]:
    try:
        items = json.loads(raw) if isinstance(raw, str) else []
    except ValueError:
        return []
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("url"), str) and item["url"].strip():
            out.append(Endpoint(item["url"].strip(), str(item.get("authcfg") or "")))
    return out


def _number(raw, default, kind):
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        return default
    return value if value > 0 else default
