"""Why a layer parameter given as a file path could not be loaded, in one line: QGIS's own parameter check says
"Could not load source layer for INPUT: x.tif not found" (or "Incorrect parameter value for LAYERS") also for a
file that exists but is empty or not a format GDAL reads, which sends the user looking for a missing file."""
from __future__ import annotations

import os
from typing import Iterable, Optional


def file_problem(value) -> Optional[str]:
    """One line for `value` (a parameter's value: a path, or a list of them) naming an existing file or folder
    that GDAL cannot open (an empty file, a file of another format), as `geovlm ask` names it; None for
    anything else: a path that does not exist (QGIS's "not found" is then right), a layer id or name, a layer
    object, a URI with options, or a file GDAL opens."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if not isinstance(item, str) or not item.strip() or not os.path.exists(item):
            continue
        reason = _reason(item)
        if reason:
            return reason
    return None


def _reason(path: str) -> Optional[str]:
    from osgeo import gdal

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return f"{path} is an empty file (0 bytes)"
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    gdal.ErrorReset()
    try:
        dataset = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_VECTOR)
    except RuntimeError:  # where gdal.UseExceptions() is in force
        dataset = None
    finally:
        detail = gdal.GetLastErrorMsg().strip()
        gdal.PopErrorHandler()
    if dataset is not None:
        return None
    if os.path.isdir(path):
        return f"{path} is a folder that GDAL cannot open as a layer: give a raster file"
    return f"cannot read {path}: {detail or 'GDAL cannot open it'}"


def parameters_problem(parameters: dict, names: Iterable[str]) -> Optional[str]:
    """`file_problem` of the first of the parameters `names` that has one, prefixed with the parameter's name."""
    for name in names:
        problem = file_problem(parameters.get(name))
        if problem:
            return f"{name}: {problem}"
    return None
