"""Which SEGs a reader's negative decisions withdraw from a radiograph's result: a
planar segmentation package's SEG whose segments are all decided negative (its segment
labels matched exactly), never a classifier's CAM-region SEG (an explanation of its
SR's positive findings), nor a SEG still showing a finding the reader kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from overread.config import Settings
from overread.harness import write_chest_dx
from overread.results import Decision, ModelRef
from overread.service.config import service_config
from overread.service.db import Database, Result, utcnow
from overread.service.jobs import JobQueue
from overread.service.outputs.seg import CAM_REGION_DESCRIPTION, build_seg
from overread.service.outputs.volume import build_volume_seg
from overread.service.review import ReviewDesk
from overread.service.store import ObjectStore
from overread.service.verification import ReportStatus, Verification

MODEL = ModelRef("seeded", "1.0")
RESULT = Result(id=1, study_instance_uid="1.2.3", model_name="seeded", model_version="1.0")


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[ReviewDesk]:
    database = Database(f"sqlite:///{tmp_path / 'overread.db'}")
    config = service_config(Settings(data_dir=tmp_path / "data"))
    store = ObjectStore(tmp_path / "store", fsync=False)
    yield ReviewDesk(config, database, store, JobQueue(database))
    database.dispose()


@pytest.fixture
def source(tmp_path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(write_chest_dx(tmp_path / "dx.dcm", size=64))


def _planar(desk: ReviewDesk, source: pydicom.Dataset, labels: list[str]) -> dict[str, Any]:
    """A planar package's SEG with one segment per label (stored)."""
    label_map = np.zeros((1, int(source.Rows), int(source.Columns)), dtype=np.uint8)
    for value in range(1, len(labels) + 1):
        label_map[0, value * 4 : value * 4 + 3, 5:20] = value
    names = {value: label for value, label in enumerate(labels, start=1)}
    seg = build_volume_seg(label_map, names, [source], MODEL, planar=True)
    return desk._store_dataset(seg, "SEG")


def _cam(desk: ReviewDesk, source: pydicom.Dataset, labels: list[str]) -> dict[str, Any]:
    """A classifier's SEG of its CAM regions, one segment per flagged finding (stored)."""
    masks = {}
    for n, label in enumerate(labels):
        mask = np.zeros((int(source.Rows), int(source.Columns)), dtype=np.uint8)
        mask[n * 4 : n * 4 + 3, 5:20] = 1
        masks[label] = mask
    seg = build_seg(masks, [source], MODEL, content_description=CAM_REGION_DESCRIPTION)
    return desk._store_dataset(seg, "SEG")


def _negative(*labels: str) -> Verification:
    return Verification(
        status=ReportStatus.FINAL,
        observer_name="dr^seg",
        organization="overread",
        verified_at=utcnow(),
        decisions={label: Decision.NEGATIVE for label in labels},
    )


def _kept(desk: ReviewDesk, artifacts: list[dict[str, Any]], *negative: str) -> list[str]:
    left, _ = desk._withdraw_planar_segs(RESULT, _negative(*negative), artifacts)
    return [a["sop_instance_uid"] for a in left]


def test_a_planar_seg_all_decided_negative_is_withdrawn(
    desk: ReviewDesk, source: pydicom.Dataset
) -> None:
    seg = _planar(desk, source, ["lung-field"])
    assert _kept(desk, [seg], "lung-field") == []
    two = _planar(desk, source, ["lung-field", "pleural-line"])
    assert _kept(desk, [two], "lung-field", "pleural-line") == []


def test_a_planar_seg_still_showing_a_kept_finding_is_sent(
    desk: ReviewDesk, source: pydicom.Dataset
) -> None:
    two = _planar(desk, source, ["lung-field", "pleural-line"])
    assert _kept(desk, [two], "lung-field") == [two["sop_instance_uid"]]
    # Labels match exactly: "lung-field 2" is not the finding "lung-field".
    other = _planar(desk, source, ["lung-field 2"])
    assert _kept(desk, [other], "lung-field") == [other["sop_instance_uid"]]


def test_a_classifier_cam_seg_is_left_as_it_is(desk: ReviewDesk, source: pydicom.Dataset) -> None:
    cam = _cam(desk, source, ["Effusion", "Nodule"])
    assert _kept(desk, [cam], "Effusion") == [cam["sop_instance_uid"]]
    assert _kept(desk, [cam], "Effusion", "Nodule") == [cam["sop_instance_uid"]]
    seg = _planar(desk, source, ["lung-field"])
    assert _kept(desk, [cam, seg], "Effusion", "lung-field") == [cam["sop_instance_uid"]]


def test_a_withdrawn_planar_seg_is_held_then_issued_again_when_kept(
    desk: ReviewDesk, source: pydicom.Dataset
) -> None:
    seg = _planar(desk, source, ["lung-field"])
    left, held = desk._withdraw_planar_segs(RESULT, _negative("lung-field"), [seg])
    assert left == []
    assert [w["sop_instance_uid"] for w in held] == [seg["sop_instance_uid"]]
    # Still negative: still held, nothing issued.
    left, again = desk._withdraw_planar_segs(RESULT, _negative("lung-field"), [], held)
    assert left == [] and again == held
    # Decided positive (no finding negative): issued again as a new instance.
    left, still = desk._withdraw_planar_segs(RESULT, _negative(), [], held)
    assert still == []
    [issued] = left
    assert issued["sop_instance_uid"] != seg["sop_instance_uid"]
    old = pydicom.dcmread(desk.store.path(seg["key"]))
    new = pydicom.dcmread(desk.store.path(issued["key"]))
    assert new.SOPInstanceUID == issued["sop_instance_uid"]
    assert new.SeriesInstanceUID == old.SeriesInstanceUID
    assert int(new.InstanceNumber) == int(old.InstanceNumber) + 1
    assert [s.SegmentLabel for s in new.SegmentSequence] == ["lung-field"]
    assert np.array_equal(new.pixel_array, old.pixel_array)
