"""Tiling plans: coverage, overlap, edges, stable ids, map extents, nodata-only tiles."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geovlm.cli.bulk_cmds import RasterTiles
from geovlm.cli.rasters import open_frame
from geovlm.core.tiling import TilePlan, plan_for_extent


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.data())
def test_shift_and_partial_cover_every_pixel_once_or_more(width, height, data):
    tile = data.draw(st.integers(max(1, max(width, height) // 20), 600))  # at most a few hundred tiles
    overlap = data.draw(st.integers(0, tile - 1))
    for edge in ("shift", "partial"):
        plan = TilePlan(width, height, tile, overlap, edge)
        tiles = list(plan.tiles())
        assert len(tiles) == len(plan)
        assert len({t.id for t in tiles}) == len(tiles)
        for t in tiles:
            assert 0 <= t.col_off and t.col_off + t.width <= width
            assert 0 <= t.row_off and t.row_off + t.height <= height
            if edge == "shift":
                assert t.width == min(tile, width) and t.height == min(tile, height)
        # Coverage: every column and row lies in some tile.
        cols = sorted({(t.col_off, t.col_off + t.width) for t in tiles})
        rows = sorted({(t.row_off, t.row_off + t.height) for t in tiles})
        for spans, length in ((cols, width), (rows, height)):
            reach = 0
            for a, b in spans:
                assert a <= reach
                reach = max(reach, b)
            assert reach == length


def test_neighbours_share_the_overlap_and_drop_leaves_the_edge_out():
    plan = TilePlan(1000, 500, 256, 56, "drop")
    tiles = list(plan.tiles())
    assert [t.col_off for t in tiles if t.row == 0] == [0, 200, 400, 600]
    assert all(t.width == 256 for t in tiles)
    assert max(t.col_off + t.width for t in tiles) == 856


def test_ids_are_stable_and_depend_on_the_plan():
    a = [t.id for t in TilePlan(900, 900, 256, 32).tiles()]
    b = [t.id for t in TilePlan(900, 900, 256, 32).tiles()]
    c = [t.id for t in TilePlan(900, 900, 256, 0).tiles()]
    assert a == b and not set(a) & set(c)
    assert a[0].endswith(":r0c0") and a[-1].endswith(":r3c3")


def test_extent_plan():
    plan, gt = plan_for_extent(1000, 2000, 1512, 2256, 2.0, tile=128)
    assert (plan.width, plan.height) == (256, 128)
    assert gt.to_map(0, 0) == (1000, 2256) and gt.to_map(256, 128) == (1512, 2000)
    with pytest.raises(ValueError):
        plan_for_extent(0, 0, 0, 10, 1.0, 64)


@pytest.mark.parametrize("bad", [dict(tile=0), dict(overlap=256), dict(overlap=-1), dict(edge="wrap")])
def test_bad_plans_are_refused(bad):
    args = dict(width=100, height=100, tile=256, overlap=0, edge="shift") | bad
    with pytest.raises(ValueError):
        TilePlan(**args)


def test_nodata_only_tiles_are_skipped(data_dir):
    """The bulk runs' reader (cli.bulk_cmds.RasterTiles) gives None (skipped) for a tile of nodata only."""
    empty = data_dir / "rasters" / "all-nodata.tif"
    frame = open_frame(empty)
    plan = TilePlan(frame.width, frame.height, 256)
    reader = RasterTiles(empty, None, skip_nodata=True)
    assert [t for t in plan.tiles() if reader(t) is not None] == []
    reader.close()

    landsat = data_dir / "rasters" / "RGB.byte.tif"
    frame = open_frame(landsat)
    plan = TilePlan(frame.width, frame.height, 64)
    reader = RasterTiles(landsat, None, skip_nodata=True)
    kept = [t for t in plan.tiles() if reader(t) is not None]
    reader.close()
    assert 0 < len(kept) < len(plan)  # the scene's nodata corners are left out
    corner = next(t for t in plan.tiles() if t.row == 0 and t.col == 0)
    assert corner not in kept
