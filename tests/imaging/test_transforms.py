"""Transforms: order, provenance, MONOCHROME1, colour, resize geometry, specs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from overread.errors import ConfigError
from overread.imaging import Image, ImageMetadata, read
from overread.imaging.transforms import (
    WINDOW_PRESETS,
    Compose,
    InvertMonochrome1,
    Letterbox,
    Normalize,
    Resample,
    Resize,
    SelectFrame,
    ToGrayscale,
    VoiWindow,
    build_chain,
    cxr_chain,
    registered_transforms,
)


def make(pixels, **meta) -> Image:  # type: ignore[no-untyped-def]
    arr = np.asarray(pixels, dtype=np.float32)
    fields = {"rows": arr.shape[-2], "columns": arr.shape[-1], **meta}
    return Image(arr, ImageMetadata(**fields))


def test_cxr_chain_contract_shape_range_and_bone_bright():
    # MONOCHROME1: low stored values are white. A bright (bone) square has LOW values.
    pixels = np.full((300, 200), 3000, dtype=np.float32)
    pixels[100:200, 50:150] = 200  # bone
    image = make(pixels, photometric_interpretation="MONOCHROME1")
    out = cxr_chain(64)(image)
    assert out.pixels.shape == (64, 64) and out.pixels.dtype == np.float32
    assert out.pixels.min() >= 0.0 and out.pixels.max() <= 1.0
    # content occupies 64 rows x ~43 cols centred; bone region brighter than background
    assert out.pixels[32, 32] > 0.9
    assert out.pixels[5, 32] < 0.1
    assert out.metadata.photometric_interpretation == "MONOCHROME2"
    assert len(out.provenance) == len(image.provenance) + 4  # window, invert, clip, resize
    np.testing.assert_array_equal(image.pixels, pixels)  # input untouched


def test_cxr_chain_uses_file_window_before_percentiles():
    pixels = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    image = make(pixels, window_center=(5000.0,), window_width=(100.0,))
    out = cxr_chain(100)(image)
    assert "file window" in out.provenance[-3]
    assert (out.pixels == 1.0).mean() > 0.45  # most of the image above the narrow window


def test_spec_round_trip_is_json_and_rebuilds_the_same_chain():
    chain = cxr_chain(224)
    spec = chain.to_spec()
    text = json.dumps(spec)
    rebuilt = build_chain(json.loads(text))
    assert rebuilt.to_spec() == spec
    image = make(np.random.default_rng(0).normal(1000, 200, (50, 70)))
    np.testing.assert_array_equal(chain(image).pixels, rebuilt(image).pixels)
    assert set(registered_transforms()) >= {
        "voi_window",
        "invert_monochrome1",
        "normalize",
        "resize",
        "resample",
        "select_frame",
        "to_grayscale",
    }


def test_build_chain_rejects_unknown_steps():
    with pytest.raises(ConfigError, match="unknown transform"):
        build_chain([{"name": "sharpen"}])
    with pytest.raises(ConfigError, match="resize"):
        build_chain([{"name": "resize", "colour": 3}])


@pytest.mark.parametrize("preset", sorted(WINDOW_PRESETS))
def test_presets(preset):
    center, width = WINDOW_PRESETS[preset]
    hu = np.array([[center - width, center, center + width]], dtype=np.float32)
    out = VoiWindow(preset=preset)(make(hu, modality="CT"))
    np.testing.assert_allclose(out.pixels, [[0.0, 0.5 + 0.5 / (width - 1), 1.0]], atol=1e-5)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset"):
        VoiWindow(preset="kidney-ish")


def test_inversion_without_window_uses_data_range():
    out = InvertMonochrome1()(make([[0, 10], [20, 30]], photometric_interpretation="MONOCHROME1"))
    np.testing.assert_array_equal(out.pixels, [[30, 20], [10, 0]])
    again = InvertMonochrome1()(out)  # now MONOCHROME2: a no-op
    assert again is out


def test_colour_to_grey_luma():
    rgb = np.zeros((2, 2, 3), dtype=np.float32)
    rgb[0, 0] = [255, 0, 0]
    rgb[0, 1] = [0, 255, 0]
    rgb[1, 0] = [0, 0, 255]
    rgb[1, 1] = [255, 255, 255]
    image = Image(rgb, ImageMetadata(rows=2, columns=2, samples_per_pixel=3, bits_stored=8))
    grey = ToGrayscale()(image)
    np.testing.assert_allclose(grey.pixels, [[76.245, 149.685], [29.07, 255]], rtol=1e-5)
    assert not grey.is_color


def test_ybr_file_becomes_rgb_and_grey(corpus):
    image = read(corpus("SC_ybr_full_422_uncompressed.dcm"))
    assert image.is_color and image.metadata.photometric_interpretation == "RGB"
    out = cxr_chain(32)(image)
    assert out.pixels.shape == (32, 32)


def test_select_frame():
    frames = np.stack([np.full((4, 4), i, dtype=np.float32) for i in range(3)])
    image = make(frames, frames=3)
    np.testing.assert_array_equal(SelectFrame(2)(image).pixels, np.full((4, 4), 2))
    np.testing.assert_array_equal(SelectFrame(-1)(image).pixels, np.full((4, 4), 2))


def test_letterbox_geometry_and_mapping():
    box = Letterbox.fit(3000, 2000, 224, 224, keep_aspect=True)
    assert (box.new_rows, box.new_cols) == (224, 149)
    assert (box.top, box.left) == (0, 37)
    row, col = box.to_source(112, 37 + 74.5)
    assert row == pytest.approx(1500, rel=0.01) and col == pytest.approx(1000, rel=0.01)


@pytest.mark.parametrize("method", ["area", "bilinear", "nearest"])
def test_resize_pads_and_preserves_mean(method):
    image = make(np.full((60, 30), 0.8), pixel_spacing=(0.2, 0.2))
    out = Resize(20, method=method, pad_value=0.0)(image)
    assert out.pixels.shape == (20, 20)
    np.testing.assert_allclose(out.pixels[:, 5:15], 0.8, atol=1e-6)
    assert out.pixels[:, :5].max() == 0.0 and out.pixels[:, 15:].max() == 0.0
    assert out.metadata.pixel_spacing == pytest.approx((0.6, 0.6))


def test_resize_colour_and_multiframe():
    rgb = Image(np.ones((40, 20, 3), np.float32), ImageMetadata(samples_per_pixel=3))
    assert Resize(10)(rgb).pixels.shape == (10, 10, 3)
    frames = make(np.ones((3, 40, 20)), frames=3)
    assert Resize(10)(frames).pixels.shape == (3, 10, 10)


def test_normalize_modes():
    image = make(np.arange(1001, dtype=np.float32).reshape(1, -1))
    mm = Normalize("minmax")(image).pixels
    assert mm.min() == 0.0 and mm.max() == 1.0
    pc = Normalize("percentile", 10, 90)(image).pixels
    assert pc[0, 100] == pytest.approx(0.0, abs=1e-3) and pc[0, 900] == pytest.approx(1.0)
    nan = make([[np.nan, 2.0]])
    np.testing.assert_array_equal(Normalize("clip")(nan).pixels, [[0.0, 1.0]])


def test_resample_volume_to_isotropic():
    volume = make(np.zeros((10, 20, 20)), frames=10, pixel_spacing=(0.5, 0.5), slice_thickness=2.0)
    out = Resample((1.0, 1.0, 1.0))(volume)
    assert out.pixels.shape == (20, 10, 10)
    assert out.metadata.pixel_spacing == pytest.approx((1.0, 1.0))
    assert out.metadata.slice_thickness == pytest.approx(1.0)


def test_compose_never_modifies_caller_image():
    pixels = np.random.default_rng(1).normal(0, 1, (64, 64)).astype(np.float32)
    image = make(pixels.copy(), photometric_interpretation="MONOCHROME1")
    chain = Compose([VoiWindow(center=0, width=2), InvertMonochrome1(), Normalize("clip")])
    chain(image)
    np.testing.assert_array_equal(image.pixels, pixels)


def test_real_monochrome1_cr_is_inverted(corpus):
    image = read(corpus("dicomdirtests/77654033/CR1/6154"))
    assert image.metadata.photometric_interpretation == "MONOCHROME1"
    out = cxr_chain(image.metadata.rows)(image)
    darkest_stored = np.unravel_index(np.argmin(image.pixels), image.pixels.shape)
    brightest_stored = np.unravel_index(np.argmax(image.pixels), image.pixels.shape)
    assert out.pixels[darkest_stored] == out.pixels.max()
    assert out.pixels[brightest_stored] == out.pixels.min()


def test_palette_colour_scaled_by_the_lut_depth(corpus):
    image = read(corpus("examples_palette.dcm"))
    assert image.metadata.stored_photometric_interpretation == "PALETTE COLOR"
    assert image.metadata.bits_stored == 16 and image.pixels.max() > 255
    out = VoiWindow()(image)
    assert out.pixels.max() <= 1.0
    assert out.pixels.max() == pytest.approx(image.pixels.max() / 65535)


def test_presentation_lut_shape_inverse():
    mono2_inverse = make(
        [[0, 10], [20, 30]],
        photometric_interpretation="MONOCHROME2",
        presentation_lut_shape="INVERSE",
    )
    out = InvertMonochrome1()(mono2_inverse)
    np.testing.assert_array_equal(out.pixels, [[30, 20], [10, 0]])
    assert "Presentation LUT Shape INVERSE" in out.provenance[-1]
    assert InvertMonochrome1()(out) is out  # done once only
    mono1_inverse = make(
        [[0, 10], [20, 30]],
        photometric_interpretation="MONOCHROME1",
        presentation_lut_shape="INVERSE",
    )
    np.testing.assert_array_equal(InvertMonochrome1()(mono1_inverse).pixels, [[30, 20], [10, 0]])


def test_cxr_chain_spec_is_stable():
    """Model packages record this spec; a change here must be deliberate."""
    assert cxr_chain(224).to_spec() == [
        {"name": "select_frame", "index": 0},
        {"name": "to_grayscale"},
        {
            "name": "voi_window",
            "center": None,
            "width": None,
            "function": None,
            "preset": None,
            "fallback": "percentile",
            "lower": 0.5,
            "upper": 99.5,
            "index": 0,
            "use_file": True,
        },
        {"name": "invert_monochrome1"},
        {"name": "normalize", "mode": "clip", "lower": 0.5, "upper": 99.5},
        {
            "name": "resize",
            "size": [224, 224],
            "keep_aspect": True,
            "pad_value": 0.0,
            "method": "area",
        },
    ]
