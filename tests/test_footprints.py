"""Ground truth: building footprints written as GeoChat answers land where rasterio's affine puts them."""
import json
import math

import pytest
from shapely.geometry import Polygon, box

from geovlm.cli.rasters import open_frame
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import get_profile
from geovlm.models.imagery import import_rasterio


def _pct_box(bounds_px, width, height):
    """A pixel box as GeoChat integers 0-100, rounded outwards so it contains the box."""
    x1, y1, x2, y2 = bounds_px
    return (
        math.floor(100 * x1 / width),
        math.floor(100 * y1 / height),
        math.ceil(100 * x2 / width),
        math.ceil(100 * y2 / height),
    )


def test_buildings_of_sample_geotiff(data_dir):
    rasterio = import_rasterio()
    raster = data_dir / "rasters" / "sample_geotiff.tif"
    with rasterio.open(raster) as ds:
        affine, width, height, crs = ds.transform, ds.width, ds.height, ds.crs
    assert crs.to_epsg() == 32616
    features = json.loads((data_dir / "rasters" / "geotiff_labels.geojson").read_text())["features"]
    assert len(features) > 10
    inverse = ~affine
    boxes = []
    for feat in features:
        ring = feat["geometry"]["coordinates"][0]
        if feat["geometry"]["type"] == "MultiPolygon":
            ring = feat["geometry"]["coordinates"][0][0]
        px = [inverse * tuple(pt[:2]) for pt in ring]
        cols, rows = [p[0] for p in px], [p[1] for p in px]
        boxes.append((_pct_box((min(cols), min(rows), max(cols), max(rows)), width, height), px))
    text = " ".join(f"<p>building {i}</p> {{<{b[0]}><{b[1]}><{b[2]}><{b[3]}>|<90>}}" for i, (b, _) in
                    enumerate(boxes))

    frame = open_frame(raster)
    answer = parse_answer(text, get_profile("geochat"), (frame.width, frame.height))
    assert len(answer.objects) == len(boxes)
    for obj, (pct, building_px) in zip(answer.objects, boxes):
        ours = frame.to_map(obj.polygon)
        x1, y1, x2, y2 = (v / 100 * s for v, s in zip(pct, (width, height, width, height)))
        expected = [affine * c for c in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))]
        for (xa, ya), (xb, yb) in zip(ours, expected):
            assert abs(xa - xb) <= 1e-6 and abs(ya - yb) <= 1e-6
        # The box contains the building it was drawn around.
        xs, ys = [p[0] for p in ours], [p[1] for p in ours]
        for col, row in building_px:
            bx, by = affine * (col, row)
            assert min(xs) - 1e-6 <= bx <= max(xs) + 1e-6 and min(ys) - 1e-6 <= by <= max(ys) + 1e-6


def test_boxes_on_the_rotated_raster(data_dir):
    rasterio = import_rasterio()
    raster = data_dir / "rasters" / "rotated.tif"
    with rasterio.open(raster) as ds:
        affine, width, height = ds.transform, ds.width, ds.height
        assert ds.crs is None and (affine.b != 0 or affine.d != 0)
    frame = open_frame(raster)
    assert frame.crs is None and not frame.geotransform.is_north_up
    side = max(width, height)  # GeoChat pads to a square, the image centred
    off_x, off_y = (side - width) // 2, (side - height) // 2
    boxes = [(0, 0, 100, 100), (10, 20, 40, 90), (35, 5, 60, 50)]
    text = "".join(f"{{<{a}><{b}><{c}><{d}>|<90>}}" for a, b, c, d in boxes)
    answer = parse_answer(text, get_profile("geochat"), (frame.width, frame.height))
    for obj, (a, b, c, d) in zip(answer.objects, boxes):
        x1, y1 = a / 100 * side - off_x, b / 100 * side - off_y
        x2, y2 = c / 100 * side - off_x, d / 100 * side - off_y
        # clipped to the image in image pixels (the pad band is not image)
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        expected = [affine * p for p in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))]
        for (xa, ya), (xb, yb) in zip(frame.to_map(obj.polygon), expected):
            assert xa == pytest.approx(xb, abs=1e-6) and ya == pytest.approx(yb, abs=1e-6)


def test_rotated_box_on_the_rotated_raster(data_dir):
    """A rotated box through a rotated, sheared geotransform: corners turned in the model's input, the pad
    undone, then rasterio's affine."""
    rasterio = import_rasterio()
    raster = data_dir / "rasters" / "rotated.tif"
    with rasterio.open(raster) as ds:
        affine, width, height = ds.transform, ds.width, ds.height
    frame = open_frame(raster)
    answer = parse_answer("{<20><40><80><60>|<120>}", get_profile("geochat"), (frame.width, frame.height))
    (obj,) = answer.objects
    assert obj.kind == "rbox" and obj.angle == 30
    side = max(width, height)
    off_x, off_y = (side - width) // 2, (side - height) // 2
    cx, cy, w, h = 0.5 * side, 0.5 * side, 0.6 * side, 0.2 * side
    t = math.radians(30)  # counter-clockwise on screen, rows pointing down
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    turned = [(cx + dx * math.cos(t) + dy * math.sin(t), cy - dx * math.sin(t) + dy * math.cos(t))
              for dx, dy in corners]
    # clipped to the image in image pixels (the pad band is not image), then through the affine
    on_image = Polygon([(x - off_x, y - off_y) for x, y in turned]).intersection(box(0, 0, width, height))
    expected = Polygon([affine * p for p in on_image.exterior.coords])
    got = Polygon(frame.to_map(obj.polygon))
    assert got.symmetric_difference(expected).area <= 1e-9 * expected.area
