"""Rasters to RGB (band choice, grey, percentile stretch, nodata) and preprocessing geometry."""

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

from geovlm.models.imagery import ImageryError, read_rgb, stretch_band  # noqa: E402

R = ms.RASTERS


def _rio():
    from geovlm.models.imagery import import_rasterio

    return import_rasterio()


def test_uint8_rgb_is_read_unchanged_and_windows_cut_right():
    with _rio().open(R / "cogeo.tif") as ds:
        full = ds.read().transpose(1, 2, 0)
    image = read_rgb(R / "cogeo.tif")
    assert image.dtype == np.uint8 and image.shape == (1024, 1024, 3)
    np.testing.assert_array_equal(image, full)
    np.testing.assert_array_equal(read_rgb(R / "cogeo.tif", (100, 200, 50, 30)), full[200:230, 100:150])
    swapped = read_rgb(R / "cogeo.tif", (0, 0, 64, 64), bands=(3, 2, 1))
    np.testing.assert_array_equal(swapped, full[:64, :64, ::-1])


def test_four_band_uint16_uses_bands_1_2_3_and_the_alpha_mask():
    image = read_rgb(R / "RGBA.uint16.tif")
    with _rio().open(R / "RGBA.uint16.tif") as ds:
        valid = ds.dataset_mask() > 0
    assert image.shape == (411, 634, 3) and image.dtype == np.uint8
    assert 0 < valid.sum() < valid.size
    assert (image[~valid] == 0).all()
    assert (image[valid] == 255).all()  # its valid pixels are a constant 10000: a constant band is white


def test_one_band_uint16_becomes_grey_with_a_2_98_stretch():
    image = read_rgb(R / "sample_geotiff.tif", (0, 0, 300, 200))
    with _rio().open(R / "sample_geotiff.tif") as ds:
        band = ds.read(1)[:200, :300].astype(float)
        valid = band != ds.nodata
    assert image.shape == (200, 300, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    lo, hi = np.percentile(band[valid], (2, 98))
    expected = np.round(np.clip((band - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(image[..., 0][valid], expected[valid])
    assert image.max() == 255 and image.std() > 10


def test_float_raster_is_stretched():
    image = read_rgb(R / "float32.tif")
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255


def test_stretch_ignores_nodata_and_outliers():
    values = np.concatenate([np.zeros(500), np.arange(1, 1001), [60000]]).astype(np.uint16)
    valid = values != 0
    out = stretch_band(values, valid)
    assert (out[~valid] == 0).all()
    assert out[-1] == 255 and out[500] == 0  # the outlier clips; the 500 nodata zeros do not pull p2 down
    assert abs(int(out[1000]) - 128) <= 2  # the median of the valid values lands mid-grey


def test_paletted_raster_is_read_through_its_colour_table(tmp_path):
    from rasterio.transform import from_origin

    colours = {0: (255, 0, 0, 255), 1: (0, 128, 0, 255), 2: (0, 0, 255, 255), 3: (250, 240, 10, 255), 4: (9, 9, 9, 255)}
    index = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 4, 3, 3]], np.uint8)
    path = tmp_path / "palette.tif"
    profile = dict(driver="GTiff", width=4, height=3, count=1, dtype="uint8", crs="EPSG:3857", nodata=4,
                   transform=from_origin(0, 3, 1, 1), photometric="palette")
    with _rio().open(path, "w", **profile) as ds:
        ds.write(index, 1)
        ds.write_colormap(1, colours)
    expected = np.array([[colours[i][:3] if i != 4 else (0, 0, 0) for i in row] for row in index], np.uint8)
    np.testing.assert_array_equal(read_rgb(path), expected)  # the nodata index is black, not its colour
    np.testing.assert_array_equal(read_rgb(path, (1, 1, 3, 2)), expected[1:3, 1:4])


def test_bad_rasters_raise_clear_errors(tmp_path):
    with pytest.raises(ImageryError, match="nodata"):
        read_rgb(R / "all-nodata.tif")
    with pytest.raises(ImageryError, match="truncated or damaged"):
        read_rgb(R / "corrupt.tif")
    with pytest.raises(ImageryError, match="cannot read raster"):
        read_rgb(tmp_path / "missing.tif")
    with pytest.raises(ImageryError, match="outside the raster"):
        read_rgb(R / "cogeo.tif", (1000, 0, 100, 10))
    with pytest.raises(ImageryError, match="bands"):
        read_rgb(R / "sample_geotiff.tif", bands=(1, 2, 3))


SIZES = [(300, 120), (90, 200), (337, 1000), (1001, 333), (17, 5), (5, 17), (513, 511), (1, 7), (64, 64)]


def _llava_reference(image: np.ndarray, mode: str, size: int) -> np.ndarray:
    """The model input as LLaVA and transformers make it, written independently of models.preprocess: pad to a
    square of the CLIP-mean colour (image centred, LLaVA's expand2square), stretch, or neither; then CLIP's image
    processor (shortest edge to `size`, bicubic, centre crop, rescale, normalise)."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from geovlm.models.encoder_export import CLIP_MEAN, CLIP_STD

    pil = Image.fromarray(image)
    w, h = pil.size
    if mode == "pad":
        square = Image.new("RGB", (max(w, h),) * 2, tuple(int(255 * m) for m in CLIP_MEAN))
        square.paste(pil, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
        pil = square
    elif mode == "stretch":
        pil = pil.resize((size, size), Image.BICUBIC)
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                      image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return processor(pil, return_tensors="np")["pixel_values"][0]


@pytest.mark.parametrize("family,fit", [("geochat", "pad"), ("skysensegpt", "stretch"), ("llava15", "crop")])
def test_preprocessing_equals_llava_and_transformers_exactly(family, fit):
    """fit_plan + fit_image + normalise give the reference's model input to the bit, for every fit mode, on odd
    and even, portrait, landscape and square sizes."""
    from geovlm.core.georef import fit_plan
    from geovlm.core.profiles import get_profile
    from geovlm.models.encoder_export import CLIP_MEAN, CLIP_STD
    from geovlm.models.preprocess import fit_image, normalise

    profile = get_profile(family).with_overrides(fit=fit)
    rng = np.random.default_rng(0)
    for w, h in SIZES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = normalise([fit_image(image, fit_plan(profile, w, h), profile.pad_color)], CLIP_MEAN, CLIP_STD)[0]
        reference = _llava_reference(image, fit, profile.input_size)
        assert ours.shape == reference.shape == (3, profile.input_size, profile.input_size)
        assert np.abs(ours - reference).max() == 0.0, (w, h)


def test_a_huge_sparse_raster_is_read_decimated_never_whole(tmp_path):
    import tracemalloc

    from geovlm.cli.rasters import frame_of_image, open_frame
    from geovlm.models.imagery import MAX_PIXELS

    rasterio = _rio()
    path = tmp_path / "huge.tif"
    profile = dict(driver="GTiff", width=40000, height=40000, count=3, dtype="uint8", tiled=True, blockxsize=512,
                   blockysize=512, sparse_ok=True, crs="EPSG:32633",
                   transform=rasterio.transform.from_origin(500000, 4600000, 0.5, 0.5))
    with rasterio.open(path, "w", **profile) as ds:  # one block of data in 40000 x 40000 pixels
        ds.write(np.full((3, 512, 512), 200, np.uint8), window=rasterio.windows.Window(0, 0, 512, 512))
    assert path.stat().st_size < 50 * 2**20
    tracemalloc.start()
    try:
        image = read_rgb(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.shape == (4096, 4096, 3) and image.shape[0] * image.shape[1] <= MAX_PIXELS
    assert peak < 600 * 2**20  # the whole raster would be 4.8 GB
    assert image[0, 0].tolist() == [200, 200, 200] and image[-1, -1].tolist() == [0, 0, 0]
    frame = frame_of_image(open_frame(path), image.shape[1], image.shape[0])
    assert frame.geotransform.to_map(4096, 4096) == pytest.approx((520000, 4580000))  # the same corners


def test_non_finite_values_are_nodata_declared_or_not(tmp_path):
    rasterio = _rio()
    values = np.linspace(0, 100, 3 * 20 * 30, dtype=np.float32).reshape(3, 20, 30)
    values[:, :5, :] = np.nan
    values[:, 5, :] = np.inf
    for name, nodata in (("undeclared.tif", None), ("declared.tif", float("nan"))):
        path = tmp_path / name
        with rasterio.open(path, "w", driver="GTiff", width=30, height=20, count=3, dtype="float32",
                           nodata=nodata) as ds:
            ds.write(values)
        image = read_rgb(path)
        assert (image[:6] == 0).all() and image[6:].max() == 255 and image[6:].min() < 20
        nan_only = tmp_path / f"all-{name}"
        with rasterio.open(nan_only, "w", driver="GTiff", width=30, height=20, count=3, dtype="float32",
                           nodata=nodata) as ds:
            ds.write(np.full((3, 20, 30), np.nan, np.float32))
        with pytest.raises(ImageryError, match="nodata .or not a finite number."):
            read_rgb(nan_only)


def test_complex_sar_data_is_read_as_its_amplitude(tmp_path):
    # single-look complex SAR (CFloat32): purely imaginary samples whose amplitude grows along the rows. Their
    # real part is 0 everywhere, which a plain cast would keep (with a ComplexWarning) and draw black.
    rasterio = _rio()
    amplitude = np.repeat(np.linspace(1, 100, 20, dtype=np.float32)[:, None], 30, axis=1)
    path = tmp_path / "slc.tif"
    with rasterio.open(path, "w", driver="GTiff", width=30, height=20, count=1, dtype="complex64") as ds:
        ds.write((1j * amplitude).astype(np.complex64), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        image = read_rgb(path)
    assert image[0].max() == 0 and image[-1].min() == 255  # 2-98 % stretch of the amplitude, grey
    assert (np.diff(image[:, 0, 0].astype(int)) >= 0).all() and (image[..., 0] == image[..., 2]).all()


def test_a_vrt_whose_source_is_missing_names_the_missing_file(tmp_path):
    # it was said to be "a truncated or damaged file", sending the user to check a VRT that is fine
    missing = tmp_path / "moved_away.tif"
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(f"""<VRTDataset rasterXSize="64" rasterYSize="64">
  <VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename relativeToVRT="0">{missing}</SourceFilename>
  <SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="64" ySize="64"/><DstRect xOff="0" yOff="0" xSize="64"
  ySize="64"/></SimpleSource></VRTRasterBand></VRTDataset>""")
    with pytest.raises(ImageryError) as caught:
        read_rgb(vrt)
    said = str(caught.value)
    assert said.startswith(f"cannot read raster {vrt}: its pixels are in a file that cannot be opened (")
    assert str(missing) in said and "damaged" not in said and "\n" not in said


def test_a_png_named_tif_says_in_one_line_it_has_no_georeferencing(tmp_path, capsys):
    import warnings

    from PIL import Image

    from geovlm.cli.rasters import open_frame
    from geovlm.core.georef import PIXEL_CRS_WKT

    path = tmp_path / "photo.tif"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(path, format="PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rasterio's NotGeoreferencedWarning would fail here
        frame = open_frame(path)
        read_rgb(path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no georeferencing" in err and "pixel coordinates" in err
    assert frame.crs == PIXEL_CRS_WKT and (frame.width, frame.height) == (40, 30)
