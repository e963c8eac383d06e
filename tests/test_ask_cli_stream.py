"""`geovlm ask` against an engine that streams: the answer printed as it arrives, its objects placed on the
raster's rotated grid from the frame of the image sent (the scripted SkySenseGPT engine of the bulk tests, which
finds each colour blob in the pixels it was sent and writes its box as SkySenseGPT does)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_bulk_cli import BLOBS, _scene_raster  # noqa: E402

from geovlm.cli import main  # noqa: E402


def test_a_streamed_answer_about_a_window_of_a_rotated_raster_lands_on_the_blobs(engines, tmp_path, capsys):
    import pyogrio
    from shapely.geometry import Polygon

    raster = tmp_path / "scene.tif"
    transform = _scene_raster(raster)  # 560x320 px, rotated 30 degrees, EPSG:32633
    engine = engines(family="skysensegpt")
    out = tmp_path / "answer.gpkg"
    argv = ["ask", str(raster), "[grounding] find the objects", "--window", "0,0,320,320", "--engine", engine.url,
            "--family", "skysensegpt", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    [request] = [json.loads(line) for line in engine.log.read_text().splitlines()]
    assert request["stream"] is True  # the answer came as server-sent events, not whole
    assert printed.count("<ref>") == 5 and printed.rstrip().endswith(".")  # 4 whole blobs, 1 cut by the edge
    objects = pyogrio.read_dataframe(out, layer="objects")
    assert objects.crs.to_epsg() == 32633
    inside = [b for b in BLOBS if b[1] + b[3] <= 320]  # the blobs wholly in the window's columns 0-320
    assert len(inside) == 4
    for _, x, y, w, h in inside:
        blob = Polygon([transform * p for p in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))])
        [found] = [g for g in objects.geometry if g.intersects(blob.centroid)]
        assert found.symmetric_difference(blob).area < 1e-2 * blob.area  # boxes in 2-decimal percents
