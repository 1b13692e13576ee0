"""DICOM SEG from a segmentation model's mask over a real single-frame radiograph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from overread.errors import ServiceError
from overread.results import ModelRef
from overread.service.outputs import build_seg

from .conftest import dciodvfy_errors

MODEL = ModelRef("cxr-ptx-seg", "0.3.0", "5e" * 32)


def _ellipse(rows: int, cols: int) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return (
        ((yy - rows * 0.3) / (rows * 0.15)) ** 2 + ((xx - cols * 0.7) / (cols * 0.1)) ** 2 <= 1
    ).astype(np.uint8)


def test_binary_seg_validates_and_reads_back(tmp_path: Path, dx_chest: Dataset) -> None:
    mask = _ellipse(dx_chest.Rows, dx_chest.Columns)
    seg = build_seg({"Pneumothorax": mask}, [dx_chest], MODEL)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []

    # Read back with pydicom: highdicom 0.28's reader insists on Slice Thickness in
    # the Pixel Measures Sequence, which its writer (rightly) omits for projection
    # radiographs, so hd.seg.segread cannot open a SEG of a DX image.
    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == dx_chest.StudyInstanceUID
    assert back.SegmentationType == "BINARY"
    (description,) = back.SegmentSequence
    assert description.SegmentLabel == "Pneumothorax"
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == "36118008"
    assert description.SegmentAlgorithmName == "cxr-ptx-seg"
    frame = back.PerFrameFunctionalGroupsSequence[0]
    source = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == dx_chest.SOPInstanceUID
    assert list(back.PatientOrientation) == list(dx_chest.PatientOrientation)
    assert np.array_equal(back.pixel_array, mask)


def test_fractional_seg_keeps_probabilities(dx_chest: Dataset) -> None:
    probabilities = _ellipse(dx_chest.Rows, dx_chest.Columns).astype(np.float32) * 0.8
    seg = build_seg({"Pleural Other": probabilities}, [dx_chest], MODEL, fractional=True)
    assert seg.SegmentationType == "FRACTIONAL"
    assert (
        seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator
        == "99OVERREAD"
    )
    assert seg.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99OVERREAD"
    stored = seg.pixel_array
    assert stored.max() == round(0.8 * 255)


def test_bad_masks_are_refused(dx_chest: Dataset) -> None:
    with pytest.raises(ServiceError, match="shape"):
        build_seg({"Pneumothorax": np.zeros((10, 10), np.uint8)}, [dx_chest], MODEL)
    with pytest.raises(ServiceError, match="only 0 and 1"):
        build_seg(
            {"Pneumothorax": np.full((dx_chest.Rows, dx_chest.Columns), 3, np.uint8)},
            [dx_chest],
            MODEL,
        )
    with pytest.raises(ServiceError, match="at least one mask"):
        build_seg({}, [dx_chest], MODEL)
