"""The pure core of GeoVLM: no QGIS, no torch, standard library only.

Model-family profiles, answer parsing, georeferencing math, tiling plans and the engine client live here;
both the QGIS plugin and the headless command line build on them.
"""
