"""The priority score: worked example, ordering properties, breakdown."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overread.findings import CHEXPERT_LABELS
from overread.triage import ScoreWeights, StudyContext, score_study

from .conftest import NOW, F

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
labels = st.sampled_from(CHEXPERT_LABELS)
departments = st.sampled_from(["ED", "ICU", "outpatient", "", "inpatient", "radiology"])
ages = st.one_of(st.none(), st.floats(min_value=0, max_value=110, allow_nan=False))
findings_st = st.lists(st.builds(F, labels, unit, st.booleans(), unit), max_size=6)
contexts = st.builds(
    StudyContext,
    departments,
    ages,
    st.one_of(st.none(), st.integers(0, 48 * 60).map(lambda m: NOW - timedelta(minutes=m))),
)


def test_worked_example_from_the_docs() -> None:
    # ED patient, 80 years, waited 90 minutes, pneumothorax p=0.9 with threshold proximity 0.2,
    # effusion p=0.3 (proximity 0.4): the example in docs/triage.md.
    findings = [F("Pneumothorax", 0.9, True, 0.2), F("Pleural Effusion", 0.3, False, 0.4)]
    context = StudyContext("ED", 80, NOW - timedelta(minutes=90))
    score = score_study(findings, context, now=NOW)
    expected = 100 * (0.9 + 0.25 * 0.2) + 40 * (0.3 + 0.25 * 0.4) + 30 + 10 + 3
    assert score.total == pytest.approx(expected)
    names = [t.name for t in score.terms]
    assert names == [
        "finding:Pneumothorax",
        "department",
        "finding:Pleural Effusion",
        "age",
        "waiting",
    ]
    assert sum(t.contribution for t in score.terms) == pytest.approx(score.total)
    assert score.breakdown()[0]["contribution"] == pytest.approx(95.0)
    assert score.total == pytest.approx(154.0)
    for department, total in (("outpatient", 124.0), ("ICU", 139.0)):
        other = replace(context, department=department)
        assert score_study(findings, other, now=NOW).total == pytest.approx(total)


def test_empty_study_scores_zero() -> None:
    assert score_study([], StudyContext(), now=NOW).total == 0.0


def test_nan_probability_counts_as_zero() -> None:
    score = score_study([F("Pneumothorax", float("nan"))], StudyContext(), now=NOW)
    assert score.total == 0.0


def test_waiting_is_capped() -> None:
    long_wait = StudyContext(received_at=NOW - timedelta(days=10))
    assert score_study([], long_wait, now=NOW).total == pytest.approx(24.0)


@given(findings_st, contexts, st.integers(0, 5), unit)
def test_more_probable_finding_never_lowers_the_score(
    findings: list[F], context: StudyContext, index: int, bump: float
) -> None:
    if not findings:
        return
    i = index % len(findings)
    before = score_study(findings, context, now=NOW).total
    raised = list(findings)
    raised[i] = replace(findings[i], probability=max(findings[i].probability, bump))
    assert score_study(raised, context, now=NOW).total >= before - 1e-9


@given(findings_st, contexts, labels, unit)
def test_adding_a_finding_never_lowers_the_score(
    findings: list[F], context: StudyContext, label: str, p: float
) -> None:
    before = score_study(findings, context, now=NOW).total
    after = score_study([*findings, F(label, p)], context, now=NOW).total
    assert after >= before - 1e-9


@given(findings_st, contexts, unit)
def test_more_severe_finding_never_lowers_the_score(
    findings: list[F], context: StudyContext, p: float
) -> None:
    # The same probability on pneumothorax (most severe) instead of atelectasis.
    mild = score_study([*findings, F("Atelectasis", p)], context, now=NOW).total
    severe = score_study([*findings, F("Pneumothorax", p)], context, now=NOW).total
    assert severe >= mild - 1e-9


@given(findings_st, ages, st.integers(0, 2000))
def test_ed_above_icu_above_outpatient(findings: list[F], age: float | None, minutes: int) -> None:
    received = NOW - timedelta(minutes=minutes)
    ed, icu, out = (
        score_study(findings, StudyContext(d, age, received), now=NOW).total
        for d in ("ED", "ICU", "outpatient")
    )
    assert ed > icu > out


@given(findings_st, departments, ages, st.integers(0, 2000), st.integers(0, 2000))
def test_longer_wait_never_lowers_the_score(
    findings: list[F], department: str, age: float | None, a: int, b: int
) -> None:
    early, late = sorted((a, b))
    short = score_study(
        findings, StudyContext(department, age, NOW - timedelta(minutes=early)), now=NOW
    )
    long = score_study(
        findings, StudyContext(department, age, NOW - timedelta(minutes=late)), now=NOW
    )
    assert long.total >= short.total - 1e-9


@given(findings_st, contexts)
def test_breakdown_sums_to_total(findings: list[F], context: StudyContext) -> None:
    score = score_study(findings, context, now=NOW)
    assert sum(t.contribution for t in score.terms) == pytest.approx(score.total)
    assert all(t.contribution > 0 for t in score.terms)


def test_custom_weights_change_the_ranking() -> None:
    weights = ScoreWeights(departments={"ED": 0, "ICU": 50})
    ed = score_study([], StudyContext("ed"), weights, now=NOW).total
    icu = score_study([], StudyContext("icu"), weights, now=NOW).total
    assert icu > ed


def test_the_proximity_weight_is_also_read_under_its_former_name() -> None:
    assert ScoreWeights.model_validate({"uncertainty_weight": 0.5}).proximity_weight == 0.5
    assert ScoreWeights.model_validate({"proximity_weight": 0.7}).proximity_weight == 0.7
    assert ScoreWeights().proximity_weight == 0.25
