"""Reader feedback: verdict to label, audit, and the CheXpert-format export."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from overread.audit import AuditEvent
from overread.data import read_phantom
from overread.errors import ConfigError
from overread.findings import CHEXPERT_LABELS
from overread.service.db import Database
from overread.triage import (
    KEY_COLUMNS,
    StudyContext,
    TriageConfig,
    Verdict,
    export_feedback,
    record_feedback,
    upsert_study,
    verdict_label,
)

from .conftest import NOW, F

CONFIG = TriageConfig()


def _study(db: Database, uid: str, findings: list[F], path: str = "") -> None:
    with db.session() as session:
        upsert_study(
            session,
            uid,
            findings,
            StudyContext("ED", 50, NOW),
            CONFIG,
            now=NOW,
            sop_instance_uid=f"{uid}.1",
            path=path,
            patient_id=f"P{uid}",
        )


@pytest.mark.parametrize(
    ("verdict", "positive", "label", "expected"),
    [
        (Verdict.AGREE, True, None, 1.0),
        (Verdict.AGREE, False, None, 0.0),
        (Verdict.DISAGREE, True, None, 0.0),
        (Verdict.DISAGREE, False, None, 1.0),
        (Verdict.UNCERTAIN, True, None, -1.0),
        (Verdict.LABEL, True, 0.0, 0.0),
        (Verdict.LABEL, None, -1.0, -1.0),
    ],
)
def test_verdict_labels(
    verdict: Verdict, positive: bool | None, label: float | None, expected: float
) -> None:
    assert verdict_label(verdict, positive, label) == expected


def test_bad_feedback_is_refused(db: Database) -> None:
    _study(db, "1.1", [F("Pneumothorax", 0.7, True)])
    with db.session() as session:
        with pytest.raises(ConfigError, match="unknown finding 'Pneumothorx'"):
            record_feedback(session, "1.1", "Pneumothorx", "agree", reader="r", now=NOW)
        with pytest.raises(ConfigError, match="unknown verdict 'maybe'"):
            record_feedback(session, "1.1", "Pneumothorax", "maybe", reader="r", now=NOW)
        with pytest.raises(ConfigError, match="must be 1, 0 or -1"):
            record_feedback(session, "1.1", "Pneumothorax", "label", reader="r", now=NOW, label=2)
        with pytest.raises(ConfigError, match="did not report"):
            record_feedback(session, "1.1", "Edema", "agree", reader="r", now=NOW)
        with pytest.raises(ConfigError, match="name of the reader"):
            record_feedback(session, "1.1", "Pneumothorax", "agree", reader="", now=NOW)
        with pytest.raises(KeyError):
            record_feedback(session, "7.7", "Pneumothorax", "agree", reader="r", now=NOW)


def test_feedback_is_stored_with_model_output_and_audited(db: Database) -> None:
    _study(db, "2.1", [F("Pneumothorax", 0.7, True, 0.4, 0.6)])
    with db.session() as session:
        row = record_feedback(
            session, "2.1", "Pneumothorax", "disagree", reader="dr.k", now=NOW, role="radiologist"
        )
        assert (row.label, row.probability, row.threshold, row.threshold_proximity) == (
            0.0,
            0.7,
            0.6,
            0.4,
        )
    with db.session() as session:
        event = session.execute(
            select(AuditEvent).where(AuditEvent.action == "feedback")
        ).scalar_one()
        assert (event.actor, event.role, event.object_uids) == ("dr.k", "radiologist", ["2.1"])
        assert event.details["verdict"] == "disagree"


def test_export_orders_by_uncertainty_and_reads_back_as_a_cohort(
    db: Database, tmp_path: Path
) -> None:
    # Margins |p - t|: A 0.35, B 0.02, C 0.02 with higher threshold proximity, D from a reader label only.
    _study(db, "A", [F("Pneumothorax", 0.85, True, 0.1)], path="images/a.dcm")
    _study(db, "B", [F("Edema", 0.52, True, 0.2), F("Fracture", 0.1, False, 0.0)])
    _study(db, "C", [F("Edema", 0.48, False, 0.9)], path="images/c.dcm")
    _study(db, "D", [F("Edema", 0.05, False, 0.0)], path="images/d.dcm")
    with db.session() as session:
        record_feedback(session, "A", "Pneumothorax", "agree", reader="r1", now=NOW)
        record_feedback(session, "B", "Edema", "disagree", reader="r1", now=NOW)
        record_feedback(session, "B", "Fracture", "uncertain", reader="r2", now=NOW)
        record_feedback(session, "C", "Edema", "agree", reader="r2", now=NOW)
        # A later verdict on the same finding replaces the earlier one.
        record_feedback(
            session, "C", "Edema", "label", reader="r3", now=NOW + timedelta(minutes=5), label=1
        )
        record_feedback(session, "D", "Cardiomegaly", "label", reader="r1", now=NOW, label=1)
    out = tmp_path / "export" / "feedback.csv"
    with db.session() as session:
        assert export_feedback(session, out) == 4
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
        header = rows[0].keys()
    assert list(header)[: len(KEY_COLUMNS) + 14] == [*KEY_COLUMNS, *CHEXPERT_LABELS]
    assert [r["StudyInstanceUID"] for r in rows] == ["C", "B", "A", "D"]
    c, b, a, d = rows
    assert c["Edema"] == "1.0" and c["Readers"] == "r3" and c["Path"] == "images/c.dcm"
    assert b["Edema"] == "0.0" and b["Fracture"] == "-1.0" and b["Pneumothorax"] == ""
    assert b["Path"] == "B.1"  # no path known: the SOP Instance UID stands in
    assert b["Readers"] == "r1;r2"
    assert a["Pneumothorax"] == "1.0" and float(a["Margin"]) == pytest.approx(0.35)
    assert d["Cardiomegaly"] == "1.0" and d["Margin"] == ""
    by_proximity = tmp_path / "by_proximity.csv"
    with db.session() as session, pytest.raises(ConfigError, match="unknown feedback order"):
        export_feedback(session, by_proximity, order="random")
    for order in ("proximity", "uncertainty"):  # the latter: the order's former name
        with db.session() as session:
            export_feedback(session, by_proximity, order=order)
        with by_proximity.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        # Threshold proximities: C 0.9, B 0.2, A 0.1, D none (0).
        assert [r["StudyInstanceUID"] for r in rows] == ["C", "B", "A", "D"]
        assert float(rows[0]["MaxThresholdProximity"]) == pytest.approx(0.9)
    table = read_phantom(out, root=tmp_path, check_files=False)
    assert len(table.frame) == 4
    assert table.frame.loc[table.frame["study_id"] == "C", "Edema"].item() == 1.0


def test_study_without_image_reference_is_left_out(db: Database, tmp_path: Path) -> None:
    with db.session() as session:
        upsert_study(session, "E", [F("Edema", 0.5)], StudyContext(), CONFIG, now=NOW)
        record_feedback(session, "E", "Edema", "agree", reader="r", now=NOW)
        assert export_feedback(session, tmp_path / "e.csv") == 0


def test_export_of_no_feedback_writes_only_the_header(db: Database, tmp_path: Path) -> None:
    out = tmp_path / "empty.csv"
    with db.session() as session:
        assert export_feedback(session, out) == 0
    assert out.read_text(encoding="utf-8").count("\n") == 1
