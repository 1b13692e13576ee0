"""read(): formats, Modality LUT, metadata."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from overread.errors import ImageReadError, InvalidDicomError, OverreadError
from overread.imaging import Image, ImageMetadata, read


def test_ct_is_in_hounsfield_units(corpus):
    path = corpus("CT_small.dcm")
    image = read(path)
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    expected = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert isinstance(image, Image)
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == (128, 128)
    np.testing.assert_array_equal(image.pixels, expected.astype(np.float32))
    meta = image.metadata
    assert isinstance(meta, ImageMetadata)
    assert meta.modality == "CT"
    assert meta.sop_instance_uid == ds.SOPInstanceUID
    assert meta.rows == 128 and meta.columns == 128 and meta.frames == 1
    assert meta.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert meta.transfer_syntax == "1.2.840.10008.1.2.1"
    assert any("Rescale" in step for step in image.provenance)
    assert "PixelData" not in image.dataset  # header kept, encoded pixels dropped


def test_raw_dataset_without_file_meta(tmp_path, corpus):
    """A dataset written without preamble/meta (implicit VR) still reads, with a warning."""
    ds = pydicom.dcmread(corpus("MR_small.dcm"))
    expected = ds.pixel_array.astype(np.float32)
    del ds.file_meta
    ds.preamble = None
    raw = tmp_path / "raw.dcm"
    ds.save_as(raw, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert raw.read_bytes()[128:132] != b"DICM"
    image = read(raw)
    np.testing.assert_array_equal(image.pixels, expected)
    assert any("inferred" in w for w in image.warnings)


def test_multiframe_shape(corpus):
    image = read(corpus("rtdose.dcm"))
    assert image.pixels.shape == (15, 10, 10)
    assert image.metadata.frames == 15
    assert image.frame_count == 15


def test_colour_has_trailing_axis(corpus):
    image = read(corpus("SC_rgb_rle.dcm"))
    assert image.pixels.shape == (100, 100, 3)
    assert image.is_color
    assert image.metadata.photometric_interpretation == "RGB"


def test_png_16_bit(tmp_path):
    from PIL import Image as PILImage

    values = (np.arange(64 * 48, dtype=np.uint32) * 17 % 65536).astype(np.uint16).reshape(64, 48)
    path = tmp_path / "film.png"
    PILImage.fromarray(values).save(path)
    image = read(path)
    assert image.metadata.source_format == "png"
    assert image.pixels.shape == (64, 48)
    np.testing.assert_array_equal(image.pixels, values.astype(np.float32))
    assert image.dataset is None


def test_jpeg_8_bit_grey(tmp_path):
    from PIL import Image as PILImage

    values = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))
    path = tmp_path / "film.jpg"
    PILImage.fromarray(values).save(path, quality=100)
    image = read(path)
    assert image.pixels.shape == (32, 64)
    assert np.abs(image.pixels - values).max() <= 4  # lossy, but close


def test_nifti_volume_axes(tmp_path):
    import nibabel as nib

    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (i=cols, j=rows, k=slices)
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    image = read(path)
    assert image.pixels.shape == (6, 5, 4)
    assert image.pixels[2, 3, 1] == data[1, 3, 2]
    assert image.metadata.pixel_spacing == pytest.approx((0.7, 0.5))
    assert image.metadata.slice_thickness == pytest.approx(2.0)


def test_missing_file_and_garbage(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read(tmp_path / "absent.dcm")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello, this is not an image at all" * 10)
    with pytest.raises(InvalidDicomError, match="not a DICOM file"):
        read(junk)


def test_non_image_dicom_is_refused(corpus):
    with pytest.raises(InvalidDicomError, match="no Pixel Data"):
        read(corpus("rtplan.dcm"))


def test_strictness_raise_refuses_warned_files(corpus):
    with pytest.raises(OverreadError, match="strictness=raise"):
        read(corpus("MR_small_padded.dcm"), strictness="raise")
    assert read(corpus("MR_small_padded.dcm"), strictness="ignore").warnings == []


def test_dx_for_presentation_metadata(write_dicom):
    from pydicom.uid import DigitalXRayImageStorageForPresentation

    stored = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    path = write_dicom(
        stored,
        SOPClassUID=DigitalXRayImageStorageForPresentation,
        Modality="DX",
        PhotometricInterpretation="MONOCHROME1",
        ViewPosition="PA",
        BodyPartExamined="CHEST",
        ImagerPixelSpacing=[0.139, 0.139],
        WindowCenter=60,
        WindowWidth=120,
        PatientSex="F",
        PatientAge="054Y",
    )
    image = read(path)
    meta = image.metadata
    assert (meta.modality, meta.view_position, meta.body_part) == ("DX", "PA", "CHEST")
    assert meta.photometric_interpretation == "MONOCHROME1"
    assert meta.pixel_spacing == pytest.approx((0.139, 0.139))
    assert meta.window_center == (60.0,) and meta.window_width == (120.0,)
    assert (meta.patient_sex, meta.patient_age) == ("F", "054Y")
    np.testing.assert_array_equal(image.pixels, stored)


@pytest.mark.parametrize("mode", ["RGB", "P", "LA", "1"])
def test_png_modes(tmp_path, mode):
    from PIL import Image as PILImage

    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    picture = PILImage.fromarray(rgb).convert(mode)
    path = tmp_path / f"{mode}.png"
    picture.save(path)
    image = read(path)
    assert image.pixels.shape[:2] == (10, 12)
    assert image.is_color == (mode in ("RGB", "P"))


def test_default_settings_follow_the_environment(write_dicom, monkeypatch):
    path = write_dicom(np.zeros((3, 4, 4), np.uint16))
    assert read(path).pixels.shape == (3, 4, 4)
    monkeypatch.setenv("OVERREAD_IMAGING__MAX_FRAMES", "2")
    with pytest.raises(OverreadError, match="limit of 2"):
        read(path)
    monkeypatch.delenv("OVERREAD_IMAGING__MAX_FRAMES")
    assert read(path).pixels.shape == (3, 4, 4)


def test_float_pixel_data_with_nan_is_read_and_flagged(write_dicom, tmp_path):
    values = np.array([[0.5, np.nan], [1.5, -2.0]], dtype=np.float32)
    ds = pydicom.dcmread(write_dicom(np.zeros((2, 2), np.uint16)))
    del ds.PixelData
    del ds.PixelRepresentation
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    ds.FloatPixelData = values.tobytes()
    path = tmp_path / "float.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = read(path)
    np.testing.assert_array_equal(image.pixels, values)
    assert "pixel data contains NaN or infinite values" in image.warnings


def test_concurrent_reads_keep_warnings_apart_and_filters_intact(corpus):
    import threading
    import warnings as pywarnings

    padded, clean = corpus("MR_small_padded.dcm"), corpus("MR_small.dcm")
    filters_before = list(pywarnings.filters)
    results: dict[str, list[list[str]]] = {"padded": [], "clean": []}

    def work(kind, path):  # type: ignore[no-untyped-def]
        for _ in range(15):
            results[kind].append(read(path).warnings)

    threads = [
        threading.Thread(target=work, args=(kind, path))
        for kind, path in (("padded", padded), ("clean", clean)) * 2
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(any("padding" in w for w in ws) for ws in results["padded"])
    assert all(ws == [] for ws in results["clean"])
    assert pywarnings.filters == filters_before
