"""Why a layer parameter given as a file path could not be loaded, in one line: QGIS's own parameter check says
"Could not load source layer for INPUT: x.tif not found" (or "Incorrect parameter value for LAYERS") also for a
file that exists but is empty or not a format GDAL reads, which sends the user looking for a missing file."""
from __future__ import annotations

import os
from typing import Iterable, Optional


def file_problem(value, raster: bool = False) -> Optional[str]:
    """One line for `value` (a parameter's value: a path, or a list of them) naming an existing file or folder
    that GDAL cannot open (an empty file, a file of another format), as `geovlm ask` names it, or, where a
    `raster` is wanted, a file GDAL opens as vector data only (as `geovlm parse --raster` names it,
    cli/rasters.py); None for anything else: a path that does not exist (QGIS's "not found" is then right), a
    layer id or name, a layer object, a URI with options, or a file GDAL opens as what is wanted."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if not isinstance(item, str) or not item.strip() or not os.path.exists(item):
            continue
        reason = _reason(item, raster)
        if reason:
            return reason
    return None


def vector_summary(dataset) -> str:
    """What a GDAL dataset opened as vector data holds, in a few words: "GeoJSON, 1 layer: labels (Polygon)" (the
    driver's short name, then up to three layers with their geometry types), the words of the CLI's
    `models.imagery.vector_file_summary`, which reads through pyogrio and so cannot run inside QGIS."""
    from osgeo import ogr

    layers = [dataset.GetLayer(i) for i in range(dataset.GetLayerCount())]
    named = ", ".join(f"{layer.GetName()} ({ogr.GeometryTypeToName(layer.GetGeomType())})"
                      if layer.GetGeomType() != ogr.wkbNone else f"{layer.GetName()} (no geometry)"
                      for layer in layers[:3])
    more = f", and {len(layers) - 3} more" if len(layers) > 3 else ""
    return (f"{dataset.GetDriver().ShortName}, {len(layers)} {'layer' if len(layers) == 1 else 'layers'}: "
            f"{named}{more}")


def _reason(path: str, raster: bool) -> Optional[str]:
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
        if raster and not dataset.RasterCount and dataset.GetLayerCount():
            return (f"{path} is a vector file ({vector_summary(dataset)}), not a raster: give a raster image "
                    "(GeoTIFF, PNG, JPEG, VRT...)")
        return None
    if os.path.isdir(path):
        return f"{path} is a folder that GDAL cannot open as a layer: give a raster file"
    return f"cannot read {path}: {detail or 'GDAL cannot open it'}"


def parameters_problem(parameters: dict, names: Iterable[str], rasters: Iterable[str] = ()) -> Optional[str]:
    """`file_problem` of the first of the parameters `names` that has one, prefixed with the parameter's name;
    those also in `rasters` want a raster file (a vector file is then a problem)."""
    rasters = set(rasters)
    for name in names:
        problem = file_problem(parameters.get(name), name in rasters)
        if problem:
            return f"{name}: {problem}"
    return None
