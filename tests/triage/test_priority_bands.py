"""Reading bands: a critical finding is read first whatever the other findings add up to."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from overread.audit import AuditEvent
from overread.errors import ConfigError
from overread.findings import CHEXPERT_LABELS
from overread.service.db import Database
from overread.triage import (
    Priority,
    PrioritySource,
    StudyContext,
    TriageConfig,
    ai_priority,
    claim_next,
    get_item,
    query_worklist,
    score_study,
    set_priority,
    triage_config,
    upsert_study,
)

from .conftest import NOW, F

CONFIG = TriageConfig()

#: Every finding but the critical ones, each just under certain: the most a study
#: without a critical finding can score from findings.
MODERATE = [
    F(label, 0.89, True)
    for label in CHEXPERT_LABELS
    if label not in ("Pneumothorax", "No Finding", "Support Devices")
]


def _uids(db: Database) -> list[str]:
    with db.session() as session:
        return [i.study_instance_uid for i in query_worklist(session, limit=100).items]


def test_a_probable_pneumothorax_is_first_whatever_the_moderate_findings_add_up_to(
    db: Database,
) -> None:
    critical = [F("Pneumothorax", 0.55, True)]
    context = StudyContext("outpatient", 40, NOW)
    busy = StudyContext("ED", 90, NOW - timedelta(hours=20))
    # The additive score alone would put the moderate study far ahead.
    assert (
        score_study(MODERATE, busy, CONFIG.weights, now=NOW).total
        > 5 * score_study(critical, context, CONFIG.weights, now=NOW).total
    )
    with db.session() as session:
        upsert_study(session, "2.1", MODERATE, busy, CONFIG, now=NOW)
        upsert_study(session, "2.2", critical, context, CONFIG, now=NOW)
        upsert_study(session, "2.3", [F("Cardiomegaly", 0.6, True)], context, CONFIG, now=NOW)
        assert get_item(session, "2.2").priority == Priority.CRITICAL
        assert get_item(session, "2.2").priority_source == PrioritySource.AI
        assert get_item(session, "2.1").priority == Priority.ROUTINE
    assert _uids(db) == ["2.2", "2.1", "2.3"]
    with db.session() as session:
        claimed = claim_next(session, reader="dr.a", now=NOW)
        assert claimed is not None and claimed.study_instance_uid == "2.2"


def test_the_score_orders_studies_within_a_band(db: Database) -> None:
    context = StudyContext("outpatient", 40, NOW)
    with db.session() as session:
        upsert_study(session, "3.1", [F("Pneumothorax", 0.6)], context, CONFIG, now=NOW)
        upsert_study(session, "3.2", [F("Pneumothorax", 0.99)], context, CONFIG, now=NOW)
        upsert_study(session, "3.3", [F("Edema", 0.2)], context, CONFIG, now=NOW)
        upsert_study(session, "3.4", [F("Edema", 0.8)], context, CONFIG, now=NOW)
    assert _uids(db) == ["3.2", "3.1", "3.4", "3.3"]


def test_which_finding_sets_which_band_is_a_site_setting(db: Database) -> None:
    config = triage_config({"priority": {"critical": {"Fracture": 0.4}, "urgent": {"Edema": 0.5}}})
    assert ai_priority([F("Fracture", 0.45)], config) == Priority.CRITICAL
    # The site's critical table replaces the alert thresholds for the band.
    assert ai_priority([F("Pneumothorax", 0.99)], config) == Priority.ROUTINE
    assert ai_priority([F("Edema", 0.5), F("Cardiomegaly", 0.99)], config) == Priority.URGENT
    assert ai_priority([F("Edema", 0.49)], config) == Priority.ROUTINE
    assert ai_priority([F("Fracture", float("nan"))], config) == Priority.ROUTINE
    context = StudyContext("outpatient", 40, NOW)
    with db.session() as session:
        no_fracture = [f for f in MODERATE if f.label != "Fracture"]
        upsert_study(session, "4.1", no_fracture, context, config, now=NOW)
        upsert_study(session, "4.2", [F("Edema", 0.55)], context, config, now=NOW)
        upsert_study(session, "4.3", [F("Fracture", 0.41)], context, config, now=NOW)
    assert _uids(db) == ["4.3", "4.1", "4.2"]  # 4.1 holds an Edema of 0.89: urgent too
    with pytest.raises(ConfigError, match="urgent threshold of"):
        triage_config({"priority": {"urgent": {"Edema": 1.5}}})
    with pytest.raises(ConfigError, match="unknown finding"):
        triage_config({"priority": {"critical": {"Dragon": 0.5}}})


def test_the_ai_never_lowers_a_band(db: Database) -> None:
    context = StudyContext("outpatient", 40, NOW)
    later = NOW + timedelta(minutes=5)
    with db.session() as session:
        upsert_study(session, "5.1", [F("Cardiomegaly", 0.3)], context, CONFIG, now=NOW)
        # The order (RIS) says urgent; the AI finds nothing critical and keeps it urgent.
        set_priority(
            session, "5.1", "urgent", source=PrioritySource.ORDER, who="ris:order", now=NOW
        )
        upsert_study(session, "5.1", [F("Cardiomegaly", 0.2)], context, CONFIG, now=later)
        item = get_item(session, "5.1")
        assert (item.priority, item.priority_source) == (Priority.URGENT, "order")
        # A critical finding raises it ...
        upsert_study(session, "5.1", [F("Pneumothorax", 0.9)], context, CONFIG, now=later)
        assert (item.priority, item.priority_source) == (Priority.CRITICAL, "ai")
        # ... and a later run that no longer sees it does not lower it.
        upsert_study(session, "5.1", [F("Pneumothorax", 0.1)], context, CONFIG, now=later)
        assert item.priority == Priority.CRITICAL and not item.has_critical
        # A reader may lower it.
        set_priority(
            session, "5.1", Priority.ROUTINE, source=PrioritySource.READER, who="dr.a", now=later
        )
        assert item.priority == Priority.ROUTINE
        with pytest.raises(ConfigError, match="unknown priority"):
            set_priority(session, "5.1", "soon", source=PrioritySource.READER, who="dr.a", now=NOW)
        with pytest.raises(ConfigError, match="by hand"):
            set_priority(session, "5.1", "urgent", source=PrioritySource.AI, who="x", now=NOW)
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "config-change")
        ).all()
        assert [(e.actor, e.details["priority"]) for e in events] == [
            ("ris:order", "urgent"),
            ("dr.a", "routine"),
        ]
