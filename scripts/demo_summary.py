"""The end of `make demo`: what it made and how to open it in QGIS (paths, layers, feature counts, CRS)."""
import sys
from pathlib import Path


def main(paths) -> int:
    import pyogrio

    print("\nmake demo made:")
    empty = []
    for path in map(Path, paths):
        if not path.is_file():
            print(f"  {path}: missing")
            continue
        for name, _ in pyogrio.list_layers(path):
            info = pyogrio.read_info(path, layer=name)
            crs = info.get("crs") or "no CRS"
            crs = crs if len(crs) < 40 else crs.split('"')[1] if '"' in crs else "a local CRS"
            print(f"  {path.resolve()}  layer {name!r}: {info['features']} features, {crs}")
            if name == "objects" and info["features"] == 0:
                empty.append(path.name)
    print("\nOpen them in QGIS: Layer > Add Layer > Add Vector Layer..., choose the .gpkg and its layers "
          "(or drag the .gpkg onto the map); to use the plugin, `make install-plugin` and enable GeoVLM.\n"
          "The demo model is a tiny random stand-in: its answers are noise, placed exactly where it put them.")
    if empty:  # a new user opening an empty layer would think the demo failed
        print(f"No box in {', '.join(empty)}: expected, as the stand-in's noise seldom writes one; the layers of "
              "real answers show what boxes on the map look like.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
