"""core/raster_identity.py: a raster's CRS name and pixel digest, as the command line (rasterio) computes
them: the same file gives the same digest, a new acquisition of the same grid another one, the same pixels in
another CRS the same digest (the CRS is named apart), and a GeoTIFF's digest comes from its stored blocks."""
import shutil

import numpy as np
import pytest

from geovlm.cli.bulk_cmds import RasterTiles
from geovlm.core.raster_identity import (
    SAMPLE_GRID,
    SAMPLE_SIDE,
    WHOLE_PIXELS,
    crs_identity,
    pixel_digest,
    sample_windows,
)
from geovlm.models.imagery import import_rasterio

rasterio = import_rasterio()


def digest(path):
    reader = RasterTiles(str(path), None, False)
    try:
        return reader.pixel_digest()
    finally:
        reader.close()


def test_sample_windows_cover_the_raster_regularly_and_small_rasters_whole():
    assert sample_windows(512, 512) == [(0, 0, 512, 512)] and WHOLE_PIXELS == 512 * 512
    windows = sample_windows(40960, 1000)
    assert len(windows) == SAMPLE_GRID ** 2 == len(set(windows))
    assert all(w == h == SAMPLE_SIDE and 0 <= c <= 40960 - w and 0 <= r <= 1000 - h for c, r, w, h in windows)
    assert sample_windows(2000, 20)[0][3] == 20  # clipped to a thin raster


def test_pixel_digest_counts_an_unreadable_window_as_a_marker():
    def broken(window):
        raise ValueError("damaged")

    assert pixel_digest(10, 10, broken) == pixel_digest(10, 10, broken) != pixel_digest(10, 10, lambda w: b"")
    assert pixel_digest(10, 10, lambda w: b"x") != pixel_digest(10, 11, lambda w: b"x")


def test_crs_identity_names_epsg_or_a_sorted_proj_string():
    assert crs_identity(32616, "+proj=utm +zone=16") == "EPSG:32616"
    assert crs_identity(None, "+proj=ortho +lat_0=10 +lon_0=5 +type=crs") == "+lat_0=10 +lon_0=5 +proj=ortho"
    assert crs_identity(None, None) == crs_identity(None, " ") == "none"


def test_new_pixels_on_the_same_grid_change_the_digest_and_a_new_crs_does_not(data_dir, tmp_path):
    source = data_dir / "rasters" / "cogeo.tif"  # a JPEG-compressed, tiled COG
    same = tmp_path / "copy.tif"
    shutil.copyfile(source, same)
    assert digest(same) == digest(source)
    with rasterio.open(source) as src:
        profile, pixels = src.profile, src.read()
    changed = tmp_path / "changed.tif"
    with rasterio.open(changed, "w", **profile) as dst:
        dst.write((255 - pixels).astype(np.uint8))
    assert digest(changed) != digest(source)
    reprojected = tmp_path / "utm.tif"
    shutil.copyfile(source, reprojected)
    with rasterio.open(reprojected, "r+") as dst:
        dst.crs = rasterio.crs.CRS.from_epsg(32616)
    assert digest(reprojected) == digest(source)  # the CRS is named apart in the plan
    assert digest(data_dir / "rasters" / "corrupt.tif") != digest(source)  # the same grid, damaged


def test_a_geotiff_is_identified_by_its_stored_blocks_a_vrt_by_its_values(data_dir, tmp_path):
    from geovlm.core.raster_identity import geotiff_block_reader

    path = data_dir / "rasters" / "cogeo.tif"
    with rasterio.open(path) as ds:
        read = geotiff_block_reader(str(path), ds.driver, ds.width, ds.height, ds.count, (512, 512),
                                    lambda name, band: ds.get_tag_item(name, "TIFF", bidx=band))
        offset, size = int(ds.get_tag_item("BLOCK_OFFSET_1_0", "TIFF", bidx=1)), int(
            ds.get_tag_item("BLOCK_SIZE_1_0", "TIFF", bidx=1))
        assert read((600, 10, 32, 32)) == path.read_bytes()[offset:offset + size]  # one tile, as stored
    vrt = tmp_path / "cogeo.vrt"
    from rasterio.shutil import copy as raster_copy

    raster_copy(path, vrt, driver="VRT")
    with rasterio.open(vrt) as ds:
        assert geotiff_block_reader(str(vrt), ds.driver, ds.width, ds.height, ds.count, (512, 512),
                                    lambda name, band: None) is None
    assert len(digest(vrt)) == 16


@pytest.mark.parametrize("name", ["RGB.byte.tif", "cogeo.tif", "sample_geotiff.tif", "corrupt.tif", "rotated.tif"])
def test_the_digest_is_stable(data_dir, name):
    assert digest(data_dir / "rasters" / name) == digest(data_dir / "rasters" / name)
