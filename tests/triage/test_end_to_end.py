"""From phantom radiographs through the real inference pipeline to worklist, alert and export."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import pandas as pd

from overread.data import read_phantom
from overread.inference import Pipeline
from overread.phantom import CohortOptions, write_cohort
from overread.service.db import Database
from overread.triage import (
    StudyContext,
    query_worklist,
    record_feedback,
    score_study,
    sweep,
    triage_config,
    triage_prediction,
)
from overread.triage import export_feedback as export

from .conftest import NOW, WebhookReceiver


def test_phantom_studies_are_triaged_alerted_and_exported(
    db: Database, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    cohort = tmp_path / "cohort"
    write_cohort(cohort, CohortOptions(n=3, seed=11, rows=384, cols=384, workers=1))
    labels = pd.read_csv(cohort / "labels.csv")
    paths = [str(cohort / p) for p in labels["Path"]]
    predictions = Pipeline.from_name("cxr-default").predict(paths)
    assert all(p.ok for p in predictions)
    # The bundled model may be an untrained placeholder: a zero threshold makes the
    # alert path deterministic; what is tested here is the plumbing, not the model.
    config = triage_config(
        {
            "alerts": {
                "critical": {"Pneumothorax": 0.0},
                "channels": [{"name": "hook", "kind": "webhook", "url": webhook.url}],
            }
        }
    )
    expected: dict[str, float] = {}
    with db.session() as session:
        for i, (prediction, row) in enumerate(zip(predictions, labels.itertuples(), strict=True)):
            context = StudyContext(str(row.Department), float(row.Age), NOW - timedelta(hours=i))
            item, alerts = triage_prediction(session, prediction, context, config, now=NOW)
            assert item.study_instance_uid == row.StudyInstanceUID
            assert item.sop_instance_uid == row.SOPInstanceUID
            assert item.model_name == "cxr-default"
            assert len(alerts) == 1 and alerts[0].finding == "Pneumothorax"
            expected[item.study_instance_uid] = score_study(
                prediction.findings, context, config.weights, now=NOW
            ).total
        page = query_worklist(session)
        assert [i.study_instance_uid for i in page.items] == sorted(
            expected, key=lambda uid: -expected[uid]
        )
        report = sweep(session, config, now=NOW)
    assert len(report.sent) == 3 and len(webhook.received) == 3
    with db.session() as session:
        for uid in expected:
            record_feedback(session, uid, "Pneumothorax", "agree", reader="dr.e2e", now=NOW)
    out = tmp_path / "feedback.csv"
    with db.session() as session:
        assert export(session, out) == 3
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["SOPInstanceUID"] for r in rows} == set(labels["SOPInstanceUID"])
    table = read_phantom(out, root=cohort)
    assert len(table.frame) == 3
