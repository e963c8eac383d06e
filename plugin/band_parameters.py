"""The bands a bulk Processing algorithm shows the model: RED_BAND, GREEN_BAND, BLUE_BAND, band parameters of its
raster parameter (the command line's `--bands r,g,b`), read into the 1-based bands `plugin.tile_sources.GdalTiles`
reads as red, green, blue, and checked by `models.imagery.check_bands` (the one check of both tools). Shared by
`geovlm:captiontiles`, `geovlm:detecttiles` (plugin/alg_bulk_tiles.py) and `geovlm:captionfeatures`
(plugin/alg_caption_features.py)."""
from __future__ import annotations

from typing import Optional, Tuple

from qgis.core import QgsProcessingParameterBand
from qgis.PyQt.QtCore import QVariant

from ..models.imagery import check_bands

BAND_PARAMETERS = ("RED_BAND", "GREEN_BAND", "BLUE_BAND")  # the command line's --bands r,g,b


def add_band_parameters(alg, raster: str) -> None:
    """Add the three optional band parameters to `alg`, each listing the bands of its parameter `raster` (the
    name of a raster layer parameter), unset by default (the reader's default: 1,2,3, or grey)."""
    for name, colour, default in zip(BAND_PARAMETERS, ("red", "green", "blue"),
                                     ("1; grey for a one-band raster", "2", "3")):
        alg.addParameter(QgsProcessingParameterBand(name, f"Band the model sees as {colour} (default: {default})",
                                                    None, raster, optional=True))


def chosen_bands(alg, layer, parameters, context) -> Optional[Tuple[int, int, int]]:
    """The three 1-based bands of the raster layer `layer` read as red, green, blue, as chosen in `parameters`
    of the algorithm `alg`; None when none is chosen (the reader's default: 1,2,3, or grey for a raster of one
    or two bands, as `geovlm caption` without --bands). ValueError in one line when only some are chosen, one
    is not a number or not a band of the raster (`models.imagery.check_bands`), or `layer` is a web layer
    (rendered in its own colours)."""
    values = [parameters.get(name) for name in BAND_PARAMETERS]
    unset = [v is None or v == "" or (isinstance(v, QVariant) and v.isNull()) for v in values]
    if all(unset):
        return None
    if any(unset):
        raise ValueError("choose a red, a green and a blue band, or none of them (bands 1,2,3, or grey for a "
                         "one-band raster)")
    for name, value in zip(BAND_PARAMETERS, values):
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            raise ValueError(f"{name} is a band number, not {value!r}")
    if layer.providerType() != "gdal":
        raise ValueError(f"{layer.name()!r} is a web layer, rendered in its own colours: leave the bands unset")
    return check_bands([alg.parameterAsInt(parameters, name, context) for name in BAND_PARAMETERS],
                       layer.bandCount())


def check_band_parameters(alg, raster: str, parameters, context) -> Tuple[bool, str]:
    """(ok, the one-line reason) of the bands chosen in `parameters` against the raster of parameter `raster`
    (`chosen_bands`), for an algorithm's `checkParameterValues`: a wrong band is refused there, before an
    engine is contacted, in the one line qgis_process prints once and the dialog shows. (True, "") when no
    raster is given (QGIS's own checks say so)."""
    layer = alg.parameterAsRasterLayer(parameters, raster, context)
    try:
        if layer is not None:
            chosen_bands(alg, layer, parameters, context)
    except ValueError as exc:
        return False, str(exc)
    return True, ""
