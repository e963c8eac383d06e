"""Helpers for the bulk-run tests: scripted engines in their own processes, the CLI as a process, the ledger."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class ScriptedEngine:
    """tests/scripted_engine.py in its own process (so it can be SIGKILLed); `url`, `requests()`, `arrivals()`,
    `kill()`."""

    def __init__(self, tmp: Path, name: str, family: str = "geochat", delay: float = 0.0, stand_in: bool = False,
                 refuse_first: int = 0):
        self.ready = tmp / f"{name}.ready"
        self.log = tmp / f"{name}.log"
        self.arrived = tmp / f"{name}.arrived"
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "scripted_engine.py"), "--family", family, "--delay", str(delay),
             "--log", str(self.log), "--ready-file", str(self.ready), "--lifetime", "240",
             "--refuse-first", str(refuse_first), "--arrivals", str(self.arrived)]
            + (["--stand-in"] if stand_in else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"scripted engine did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        self.url = json.loads(self.ready.read_text())["url"]

    def requests(self) -> int:
        """Requests answered (logged once their delay has passed)."""
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def arrivals(self) -> int:
        """Chat requests received, answered or not (a client that gave up waiting sent them too)."""
        return len(self.arrived.read_text().splitlines()) if self.arrived.exists() else 0

    def kill(self) -> None:
        """SIGKILL the engine (as a crash would end it) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def cli(*args, env=None) -> subprocess.Popen:
    """`geovlm ...` as a process of this venv's Python."""
    return subprocess.Popen([sys.executable, "-m", "geovlm", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, **(env or {})))


def run_cli(*args, timeout=180):
    """(exit status, stdout, stderr) of `geovlm ...` run to its end (`timeout` seconds at most)."""
    proc = cli(*args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def huge_vrt(path, side=1_000_000):
    """A 3-band VRT of side x side px in EPSG:32618 at 300 m (zeros: no source), as bench/bench_huge_plan.py's:
    3,818,116 tiles of 512 px by default, made in no time and no space."""
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{b}"/>' for b in (1, 2, 3))
    path.write_text(f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}"><SRS>EPSG:32618</SRS>'
                    f'<GeoTransform>101985, 300, 0, 2826915, 0, -300</GeoTransform>{bands}</VRTDataset>')
    return path


def ledger_rows(path, table="tiles", columns="tile_id, status"):
    """Rows of a ledger table read with plain sqlite (works while another process writes)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(f"SELECT {columns} FROM {table}").fetchall()
    finally:
        con.close()


def wait_for_rows(path, count, timeout=60.0, status="ok") -> int:
    """Wait until the ledger holds `count` rows of `status`; returns how many it holds."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        if Path(path).exists():
            try:
                n = sum(1 for _, s in ledger_rows(path) if s == status)
            except sqlite3.DatabaseError:
                n = 0
            if n >= count:
                return n
        time.sleep(0.05)
    return n


def inverted_copy(source, dest):
    """`dest`: a GeoTIFF on `source`'s grid and CRS whose every pixel is 255 - the source's (a new acquisition
    of the same grid, as far as a bulk run can tell)."""
    from geovlm.models.imagery import import_rasterio

    rasterio = import_rasterio()
    with rasterio.open(source) as src:
        profile, pixels = src.profile, src.read()
    with rasterio.open(dest, "w", **profile) as dst:
        dst.write(255 - pixels)
    return dest


def constant_raster(path, values, dtype="uint8", size=256, nodata=None):
    """A north-up GeoTIFF (EPSG:32633, 10 m) of `size` x `size` px whose band i holds `values[i]` everywhere, every
    band a plain one (a 4-band image as NIR,R,G,B or any multispectral product, not RGBA)."""
    import numpy as np
    from osgeo import gdal, gdal_array, osr

    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, len(values),
                                              gdal_array.NumericTypeCodeToGDALTypeCode(np.dtype(dtype)),
                                              ["PHOTOMETRIC=MINISBLACK"])  # no band taken for alpha
    ds.SetGeoTransform((500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for i, value in enumerate(values, start=1):
        band = ds.GetRasterBand(i)
        band.WriteArray(np.full((size, size), value, dtype))
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds = None
    return path


def means(engine, key="mean"):
    """The mean value of every image the scripted engine was sent, in order (`key` "channels": the mean of each
    of its red, green and blue)."""
    return [json.loads(line)[key] for line in engine.log.read_text().splitlines()] if engine.log.exists() else []


def stored_plan(out):
    """The plan a ledger records (`RunPlan.to_dict` of the run that made it), read with plain sqlite."""
    con = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    try:
        return json.loads(con.execute("SELECT plan FROM geovlm_plan").fetchone()[0])
    finally:
        con.close()


def check_band_chooser(dialog, name, band) -> None:
    """In a Processing dialog of a raster with bands 1-4: no band is chosen at first; choosing `band` in the
    chooser `name` (RED_BAND, GREEN_BAND or BLUE_BAND) lists the raster's four bands and gives `band`."""
    params = dialog.createProcessingParameters()
    assert [params.get(key) for key in ("RED_BAND", "GREEN_BAND", "BLUE_BAND")] == [None] * 3
    wrapper = dialog.mainWidget().wrappers[name]
    wrapper.setParameterValue(band, dialog.processingContext())
    combo = wrapper.wrappedWidget()
    assert [combo.itemText(i).split(" (")[0] for i in range(1, combo.count())] == [f"Band {b}" for b in range(1, 5)]
    assert dialog.createProcessingParameters()[name] == band


def browser_model_for_dialogs(qgis_iface, monkeypatch):
    """Give the test interface a QgsBrowserGuiModel for the test's length: a Processing dialog asks the interface
    for one, and pytest-qgis's has none. Returns the model (kept alive by the patched method). (The layer tree
    view that loading results asks for comes with the `plugin` fixture.)"""
    from qgis.gui import QgsBrowserGuiModel

    browser = QgsBrowserGuiModel()
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)
    return browser


def empty_web_layer(folder: Path):
    """A valid XYZ web layer (QGIS's "wms" provider, zoom 0 to 19) named "web" over `folder`/{z}/{x}/{y}.png,
    where there is no tile: for the checks that refuse or plan a web layer before anything is rendered."""
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(f"type=xyz&url={Path(folder).as_uri()}/{{z}}/{{x}}/{{y}}.png&zmin=0&zmax=19", "web", "wms")
    assert layer.isValid()
    return layer
