"""A shadow's (or canary's) readings against the active version's, on the same studies.

Every study both versions read during the rollout is a pair. Per label:

* the decisions agree or not; McNemar's exact test on the discordant pairs says
  whether one version calls the finding positive more often
  (:func:`overread.evaluation.agreement.mcnemar`);
* where readers gave feedback on the label for the study (the ``feedback`` table:
  agree/disagree turned into a 0/1 label), both AUCs and DeLong's paired test of
  their difference (:func:`overread.evaluation.delong.delong_test`), when the
  labelled studies hold both classes.

A study's probability of a finding is the highest of its images, its decision
positive when any image's is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from overread.db import Database
from overread.evaluation.agreement import mcnemar, paired_table
from overread.evaluation.delong import delong_test
from overread.results import ResultSummary
from overread.service.db import Result
from overread.service.rollout import Rollout, RolloutResult, split_ref
from overread.triage.schema import Feedback


@dataclass(frozen=True)
class StudyReading:
    """One version's reading of one study, per label: probability and decision."""

    probabilities: Mapping[str, float]
    positive: Mapping[str, bool]


def study_reading(summary: Mapping[str, Any]) -> StudyReading:
    """The study-level reading of a stored result summary."""
    probabilities: dict[str, float] = {}
    positive: dict[str, bool] = {}
    for prediction in ResultSummary.from_dict(summary).instances:
        for finding in prediction.findings:
            probabilities[finding.label] = max(
                probabilities.get(finding.label, 0.0), float(finding.probability)
            )
            positive[finding.label] = positive.get(finding.label, False) or finding.positive
    return StudyReading(probabilities, positive)


@dataclass(frozen=True)
class LabelComparison:
    """One label's comparison over the paired studies."""

    label: str
    studies: int
    agreement: float
    active_positive: int
    candidate_positive: int
    mcnemar_p: float
    labelled: int = 0
    auc_active: float | None = None
    auc_candidate: float | None = None
    delong_p: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON of one label."""
        return {
            "label": self.label,
            "studies": self.studies,
            "agreement": round(self.agreement, 4),
            "active_positive": self.active_positive,
            "candidate_positive": self.candidate_positive,
            "mcnemar_p": round(self.mcnemar_p, 6),
            "labelled": self.labelled,
            "auc_active": self.auc_active,
            "auc_candidate": self.auc_candidate,
            "delong_p": self.delong_p,
        }


@dataclass(frozen=True)
class RolloutComparison:
    """The candidate against the active version over the studies both read."""

    alias: str
    active: str
    candidate: str
    state: str
    paired_studies: int
    decision_agreement: float | None
    labels: tuple[LabelComparison, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``overread models compare --json`` and the REST API."""
        return {
            "alias": self.alias,
            "active": self.active,
            "candidate": self.candidate,
            "state": self.state,
            "paired_studies": self.paired_studies,
            "decision_agreement": None
            if self.decision_agreement is None
            else round(self.decision_agreement, 4),
            "labels": [label.to_dict() for label in self.labels],
        }


def _feedback_labels(database: Database, studies: Sequence[str]) -> dict[tuple[str, str], float]:
    """The readers' latest 0/1 label per (study, finding)."""
    labels: dict[tuple[str, str], float] = {}
    with database.session() as session:
        for uids in (studies[i : i + 500] for i in range(0, len(studies), 500)):
            rows = session.scalars(
                select(Feedback).where(Feedback.study_instance_uid.in_(uids)).order_by(Feedback.id)
            ).all()
            for row in rows:
                labels[(row.study_instance_uid, row.finding)] = float(row.label)
    return labels


def compare_rollout(database: Database, rollout: Rollout) -> RolloutComparison:
    """Pair the candidate's and the active's readings of the studies both read."""
    cand_name, cand_version = split_ref(rollout.candidate_ref)
    act_name, act_version = split_ref(rollout.active_ref)
    with database.session() as session:
        candidate_rows = session.execute(
            select(Result.study_instance_uid, Result.summary)
            .join(RolloutResult, RolloutResult.result_id == Result.id)
            .where(
                RolloutResult.alias == rollout.alias,
                Result.model_name == cand_name,
                Result.model_version == cand_version,
            )
        ).all()
        uids = [str(r[0]) for r in candidate_rows]
        active_rows = session.execute(
            select(Result.study_instance_uid, Result.summary).where(
                Result.model_name == act_name,
                Result.model_version == act_version,
                Result.study_instance_uid.in_(uids or [""]),
            )
        ).all()
    candidate = {str(uid): study_reading(summary) for uid, summary in candidate_rows}
    active = {str(uid): study_reading(summary) for uid, summary in active_rows}
    paired = sorted(set(candidate) & set(active))
    feedback = _feedback_labels(database, paired)
    labels: list[LabelComparison] = []
    agree = total = 0
    names = sorted({name for uid in paired for name in candidate[uid].positive})
    for name in names:
        studies = [
            u for u in paired if name in candidate[u].positive and name in active[u].positive
        ]
        if not studies:
            continue
        a = np.array([active[u].positive[name] for u in studies], dtype=bool)
        c = np.array([candidate[u].positive[name] for u in studies], dtype=bool)
        agree += int((a == c).sum())
        total += len(studies)
        test = mcnemar(paired_table(a, c))
        labelled = [u for u in studies if (u, name) in feedback]
        auc_a = auc_c = delong_p = None
        truth = np.array([feedback[(u, name)] for u in labelled])
        if labelled and 0 < truth.sum() < len(truth):
            comparison = delong_test(
                truth,
                [active[u].probabilities[name] for u in labelled],
                [candidate[u].probabilities[name] for u in labelled],
            )
            auc_a = round(comparison.auc_a, 4)
            auc_c = round(comparison.auc_b, 4)
            delong_p = round(comparison.p, 6)
        labels.append(
            LabelComparison(
                label=name,
                studies=len(studies),
                agreement=float((a == c).mean()),
                active_positive=int(a.sum()),
                candidate_positive=int(c.sum()),
                mcnemar_p=test.p,
                labelled=len(labelled),
                auc_active=auc_a,
                auc_candidate=auc_c,
                delong_p=delong_p,
            )
        )
    return RolloutComparison(
        alias=rollout.alias,
        active=rollout.active_ref,
        candidate=rollout.candidate_ref,
        state=rollout.state.value,
        paired_studies=len(paired),
        decision_agreement=agree / total if total else None,
        labels=tuple(labels),
    )


__all__ = [
    "LabelComparison",
    "RolloutComparison",
    "StudyReading",
    "compare_rollout",
    "study_reading",
]
