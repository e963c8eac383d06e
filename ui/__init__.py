"""Qt widgets of the plugin (PyQGIS and Qt only)."""
