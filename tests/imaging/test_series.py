"""Series -> volume with synthetic CT slices written by pydicom."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, generate_uid

from overread.errors import SeriesError
from overread.imaging import read
from overread.imaging.series import assemble_volume, load_series

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def write_ct_series(
    write_dicom,
    z_positions,
    *,
    orientation=AXIAL,
    shuffle_numbers=True,
    series_uid=None,
    orientations=None,
):  # type: ignore[no-untyped-def]
    """Slices whose stored value encodes their z position (value = 1000 + 10 z)."""
    series_uid = series_uid or generate_uid()
    numbers = list(range(1, len(z_positions) + 1))
    if shuffle_numbers:
        random.Random(7).shuffle(numbers)
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    paths = []
    for i, z in enumerate(z_positions):
        origin = np.array([-100.0, -120.0, 0.0]) + normal * z
        pixels = np.full((8, 6), 1000 + round(10 * z), dtype=np.uint16)
        paths.append(
            write_dicom(
                pixels,
                SOPClassUID=CTImageStorage,
                Modality="CT",
                SeriesInstanceUID=series_uid,
                InstanceNumber=numbers[i],
                ImagePositionPatient=[f"{v:.4f}" for v in origin],
                ImageOrientationPatient=(orientations or {}).get(i, orientation),
                PixelSpacing=[0.7, 0.5],
                SliceThickness=2.5,
                RescaleSlope=1,
                RescaleIntercept=-1024,
            )
        )
    return paths


def test_sorted_by_position_not_instance_number(write_dicom):
    z = [0.0, 2.5, 5.0, 7.5, 10.0, 12.5]
    paths = write_ct_series(write_dicom, z)
    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    result = load_series(shuffled)
    assert result.errors == []
    (volume,) = result.volumes
    assert volume.pixels.shape == (6, 8, 6)
    # HU = 1000 + 10 z - 1024: strictly increasing with z
    np.testing.assert_allclose(volume.pixels[:, 0, 0], [1000 + 10 * v - 1024 for v in z])
    assert volume.positions == pytest.approx(z)
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.5))
    assert volume.warnings == []
    # affine: column index along x (0.5 mm), row index along y (0.7 mm), slice along z
    np.testing.assert_allclose(
        volume.affine,
        [[0.5, 0, 0, -100], [0, 0.7, 0, -120], [0, 0, 2.5, 0], [0, 0, 0, 1]],
        atol=1e-6,
    )
    assert volume.affine @ np.array([2, 3, 4, 1]) == pytest.approx([-99.0, -117.9, 10.0, 1.0])


def test_oblique_orientation_sorts_along_normal(write_dicom):
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    oblique = [1.0, 0.0, 0.0, 0.0, c, s]
    z = [4.0, 0.0, 2.0, 6.0]
    volume = load_series(write_ct_series(write_dicom, z, orientation=oblique)).volumes[0]
    relative = np.asarray(volume.positions) - volume.positions[0]
    np.testing.assert_allclose(relative, [0.0, 2.0, 4.0, 6.0], atol=1e-3)
    np.testing.assert_array_equal(
        volume.pixels[:, 0, 0], [1000 + 10 * v - 1024 for v in (0, 2, 4, 6)]
    )
    normal = np.cross(oblique[:3], oblique[3:])
    np.testing.assert_allclose(volume.affine[:3, 2], normal * 2.0, atol=1e-3)


def test_gap_is_detected(write_dicom):
    z = [0.0, 2.5, 5.0, 12.5, 15.0]  # 7.5 and 10.0 missing
    volume = load_series(write_ct_series(write_dicom, z)).volumes[0]
    assert len(volume.warnings) == 1
    assert "about 2 missing slice(s)" in volume.warnings[0]
    with pytest.raises(SeriesError, match="gap"):
        assemble_volume([read(p) for p in write_ct_series(write_dicom, z)], strict=True)


def test_uneven_spacing_is_reported(write_dicom):
    volume = load_series(write_ct_series(write_dicom, [0.0, 2.5, 5.2, 7.5, 10.0])).volumes[0]
    assert any("uneven slice spacing" in w for w in volume.warnings)


def test_mixed_orientation_is_refused(write_dicom):
    paths = write_ct_series(write_dicom, [0.0, 2.5, 5.0], orientations={1: [1, 0, 0, 0, 0, -1]})
    result = load_series(paths)
    assert result.volumes == []
    assert len(result.errors) == 1 and "mixed orientation" in result.errors[0]


def test_duplicate_positions_are_refused(write_dicom):
    result = load_series(write_ct_series(write_dicom, [0.0, 2.5, 2.5, 5.0]))
    assert "share a position" in result.errors[0]


def test_two_series_and_a_bad_file_carry_on(write_dicom, tmp_path):
    a = write_ct_series(write_dicom, [0.0, 1.0, 2.0])
    b = write_ct_series(write_dicom, [0.0, 3.0, 6.0, 9.0])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 200)
    result = load_series([*a, junk, *b])
    assert sorted(v.pixels.shape[0] for v in result.volumes) == [3, 4]
    assert len(result.errors) == 1 and result.errors[0].startswith(str(junk))


def test_enhanced_multiframe_uses_per_frame_positions(write_dicom):
    z = [5.0, 0.0, 10.0]  # frames stored out of order
    frames = np.stack([np.full((4, 4), int(v), dtype=np.uint16) for v in z])
    groups = []
    for v in z:
        fg = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [0, 0, v]
        fg.PlanePositionSequence = Sequence([plane])
        groups.append(fg)
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = AXIAL
    measures = Dataset()
    measures.PixelSpacing = [1.0, 1.0]
    measures.SliceThickness = 5.0
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    path = write_dicom(
        frames,
        PerFrameFunctionalGroupsSequence=Sequence(groups),
        SharedFunctionalGroupsSequence=Sequence([shared]),
    )
    volume = assemble_volume([read(path)])
    np.testing.assert_array_equal(volume.pixels[:, 0, 0], [0, 5, 10])
    assert volume.spacing == pytest.approx((5.0, 1.0, 1.0))


def test_real_ct_series_from_pydicom_corpus():
    paths = sorted((PYDICOM_FILES / "dicomdirtests" / "77654033" / "CT2").iterdir())
    result = load_series(paths)
    assert result.errors == []
    (volume,) = result.volumes
    assert volume.pixels.shape[1:] == (16, 16)
    assert np.all(np.diff(volume.positions) > 0)


def test_volume_to_image_resamples(write_dicom):
    from overread.imaging.transforms import Resample

    volume = load_series(write_ct_series(write_dicom, [0.0, 2.5, 5.0, 7.5])).volumes[0]
    image = volume.to_image()
    assert image.pixels.shape == (4, 8, 6)
    out = Resample((1.25, 0.7, 0.5))(image)
    assert out.pixels.shape == (8, 8, 6)


def test_load_series_walks_directories(write_dicom, tmp_path):
    paths = write_ct_series(write_dicom, [0.0, 2.0, 4.0])
    assert all(p.parent == tmp_path for p in paths)
    result = load_series([tmp_path])
    assert result.errors == [] and result.volumes[0].pixels.shape[0] == 3


def test_the_series_warnings_are_known_generated_warnings(write_dicom):
    from overread.service.outputs.volume import is_generated_warning

    for z in ([0.0, 2.5, 5.0, 12.5, 15.0], [0.0, 2.5, 5.2, 7.5, 10.0], [0.0]):
        warnings = load_series(write_ct_series(write_dicom, z)).volumes[0].warnings
        assert warnings
        for warning in warnings:
            assert is_generated_warning(warning), warning
