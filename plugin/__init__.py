"""QGIS side of GeoVLM: the plugin, its Processing provider and algorithms (PyQGIS, Qt and numpy only)."""
