"""Which earlier CT result counts as a study's prior (nodule growth is stated in the SR)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overread.inference.nodules import categorise
from overread.results import ModelRef, Prediction, Region, ResultSummary, StudyHeader
from overread.service.db import Database, Result
from overread.service.infer_volume import latest_prior_regions
from overread.service.rollout import RolloutResult, RolloutRole

MODEL = "ct-threshold-baseline"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'overread.db'}")
    yield db
    db.dispose()


def _region(diameter: float) -> Region:
    return Region(
        label="nodule",
        index=1,
        score=0.9,
        volume_mm3=100.0,
        longest_diameter_mm=diameter,
        mean_hu=20.0,
        solid_fraction=1.0,
        density="solid",
        category=categorise("solid", diameter),
        centre_mm=(0.0, 0.0, 0.0),
        box_mm=(0, 0, 0, 1, 1, 1),
        box_voxels=(0, 0, 0, 1, 1, 1),
    )


def _store(db: Database, uid: str, date: str, diameter: float, *, patient: str = "P1") -> int:
    study = StudyHeader(study_instance_uid=uid, patient_id=patient, study_date=date)
    prediction = Prediction(
        path=None, ok=True, model=ModelRef(MODEL, "1.0.0"), regions=[_region(diameter)]
    )
    summary = ResultSummary(alias=MODEL, instances=(prediction,), study=study).to_dict()
    with db.session() as session:
        row = Result(
            job_id=1,
            study_instance_uid=uid,
            model_name=MODEL,
            model_version="1.0.0",
            summary=summary,
        )
        session.add(row)
        session.flush()
        return row.id


def test_only_an_earlier_dated_study_of_the_same_patient_is_a_prior(database: Database) -> None:
    _store(database, "1.1", "20240101", 5.0)
    _store(database, "1.2", "20250101", 6.0)
    _store(database, "1.9", "20260101", 9.0)  # later than the current study
    _store(database, "1.8", "", 8.0)  # undated
    _store(database, "1.7", "20250601", 7.0, patient="P2")  # another patient
    now = StudyHeader(study_instance_uid="1.5", patient_id="P1", study_date="20250701")
    with database.session() as session:
        found = latest_prior_regions(session, MODEL, now)
    assert found is not None
    uid, regions = found
    assert uid == "1.2" and [r.longest_diameter_mm for r in regions] == [6.0]


def test_an_undated_study_gets_no_prior(database: Database) -> None:
    _store(database, "1.1", "20240101", 5.0)
    now = StudyHeader(study_instance_uid="1.5", patient_id="P1", study_date="")
    with database.session() as session:
        assert latest_prior_regions(session, MODEL, now) is None


def test_a_shadow_result_is_never_a_prior(database: Database) -> None:
    shadow = _store(database, "1.2", "20250101", 6.0)
    with database.session() as session:
        session.add(
            RolloutResult(
                result_id=shadow,
                alias=MODEL,
                role=RolloutRole.SHADOW.value,
                study_instance_uid="1.2",
            )
        )
    now = StudyHeader(study_instance_uid="1.5", patient_id="P1", study_date="20250701")
    with database.session() as session:
        assert latest_prior_regions(session, MODEL, now) is None
