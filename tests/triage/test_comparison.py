"""The change list between a prior's AI findings and the current study's."""

from __future__ import annotations

import pytest

from overread.errors import OverreadError
from overread.results import Decision, FindingResult
from overread.triage.comparison import DEFAULT_MARGIN, ChangeKind, compare_findings


def finding(label: str, p: float, decision: Decision | None = None) -> FindingResult:
    return FindingResult(label, p, p >= 0.5, threshold=0.5, decision=decision)


def kinds(current: list[FindingResult], prior: list[FindingResult], **kw: float) -> dict[str, str]:
    return {c.label: c.kind.value for c in compare_findings(current, prior, **kw)}


def test_new_and_resolved_follow_the_positive_call() -> None:
    got = kinds(
        [finding("Pneumothorax", 0.8), finding("Edema", 0.2)],
        [finding("Pneumothorax", 0.1), finding("Edema", 0.7)],
    )
    assert got == {"Pneumothorax": "new", "Edema": "resolved"}


def test_probability_moves_count_only_beyond_the_margin() -> None:
    current = [
        finding("Effusion", 0.85),
        finding("Cardiomegaly", 0.30),
        finding("Atelectasis", 0.58),
    ]
    prior = [finding("Effusion", 0.60), finding("Cardiomegaly", 0.45), finding("Atelectasis", 0.52)]
    got = kinds(current, prior)
    assert got == {
        "Effusion": "probability up",  # +0.25, positive both times
        "Cardiomegaly": "probability down",  # -0.15, negative both times
        "Atelectasis": "unchanged",  # +0.06 is within the default 0.10
    }
    # A wider margin swallows the Effusion move; a narrower one shows Atelectasis's.
    assert kinds(current, prior, margin=0.3)["Effusion"] == "unchanged"
    assert kinds(current, prior, margin=0.05)["Atelectasis"] == "probability up"


def test_a_move_exactly_at_the_margin_is_not_a_change() -> None:
    (change,) = compare_findings([finding("Edema", 0.30)], [finding("Edema", 0.20)], margin=0.25)
    assert change.kind is ChangeKind.UNCHANGED
    assert change.probability_delta == pytest.approx(0.10)
    assert change.probability_moved is False


def test_calls_to_or_from_indeterminate_are_decision_changes() -> None:
    got = kinds(
        [
            finding("Pneumothorax", 0.48, Decision.INDETERMINATE),
            finding("Consolidation", 0.9),
            finding("Edema", 0.46, Decision.INDETERMINATE),
        ],
        [
            finding("Pneumothorax", 0.2),
            finding("Consolidation", 0.47, Decision.INDETERMINATE),
            finding("Edema", 0.44, Decision.INDETERMINATE),
        ],
    )
    assert got == {
        "Pneumothorax": "decision changed",
        "Consolidation": "decision changed",
        "Edema": "unchanged",  # indeterminate both times, moved 0.02
    }


def test_labels_only_one_study_scored_are_named_not_guessed() -> None:
    changes = compare_findings([finding("Fracture", 0.7)], [finding("Lung Lesion", 0.6)])
    by_label = {c.label: c for c in changes}
    assert by_label["Fracture"].kind is ChangeKind.NOT_IN_PRIOR
    assert by_label["Fracture"].prior_probability is None
    assert by_label["Fracture"].probability_delta is None
    assert by_label["Lung Lesion"].kind is ChangeKind.NOT_IN_CURRENT
    assert by_label["Lung Lesion"].current_decision is None


def test_the_list_puts_what_needs_attention_first() -> None:
    changes = compare_findings(
        [
            finding("Edema", 0.31),
            finding("Effusion", 0.9),
            finding("Pneumothorax", 0.7),
            finding("Fracture", 0.1),
            finding("Pneumonia", 0.6),
        ],
        [
            finding("Edema", 0.3),
            finding("Effusion", 0.7),
            finding("Pneumothorax", 0.2),
            finding("Pneumonia", 0.9),
        ],
    )
    assert [c.kind for c in changes] == [
        ChangeKind.NEW,  # Pneumothorax
        ChangeKind.PROBABILITY_UP,  # Effusion
        ChangeKind.PROBABILITY_DOWN,  # Pneumonia 0.9 -> 0.6, positive both times
        ChangeKind.UNCHANGED,  # Edema
        ChangeKind.NOT_IN_PRIOR,  # Fracture
    ]
    assert changes[0].probability_delta == pytest.approx(0.5)
    assert changes[0].current_decision is Decision.POSITIVE
    assert changes[0].prior_decision is Decision.NEGATIVE


@pytest.mark.parametrize("margin", [-0.01, 1.0, 2.0])
def test_a_margin_outside_zero_to_one_is_refused(margin: float) -> None:
    with pytest.raises(OverreadError, match="margin"):
        compare_findings([], [], margin=margin)


def test_identical_studies_change_nothing() -> None:
    same = [finding("Edema", 0.7), finding("Fracture", 0.1)]
    assert {c.kind for c in compare_findings(same, same)} == {ChangeKind.UNCHANGED}
    assert DEFAULT_MARGIN == 0.10
