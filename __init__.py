"""GeoVLM: remote-sensing vision-language models in QGIS.

This file must import without QGIS: the package is also the engine's and the command line's.
"""

__version__ = "0.1.0"


def classFactory(iface):  # noqa: N802 (QGIS's name)
    """QGIS entry point: only here is QGIS code imported."""
    from .plugin.main import GeoVlmPlugin

    return GeoVlmPlugin(iface)
