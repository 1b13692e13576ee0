"""The model card summary a report prints: intended use, and "not for diagnosis"."""

from __future__ import annotations

import pytest

from overread.models import bundled_dir, load_package
from overread.models.card import ModelCardSummary, intended_use_section

CARD = """# Model card: cxr-x 2.0

## Intended use

Triage of adult frontal chest radiographs.

Trained on **real** data; `validated` at two sites.

## Model

- Architecture: whatever; not for diagnosis in this section, which is not read.
"""


def test_intended_use_section_is_read_as_plain_paragraphs() -> None:
    section = intended_use_section(CARD)
    assert section == (
        "Triage of adult frontal chest radiographs.\n\nTrained on real data; validated at two sites."
    )
    assert intended_use_section("# Card\n\nNo such section.\n") == ""


def test_a_card_that_allows_diagnosis_is_not_marked() -> None:
    summary = ModelCardSummary.of(
        "cxr-x", "2.0", "Triage of adult frontal chest radiographs.", CARD
    )
    assert not summary.not_for_diagnosis
    # The manifest's statement once, then what the card adds.
    assert summary.statement == (
        "Triage of adult frontal chest radiographs. Trained on real data; validated at two sites."
    )


@pytest.mark.parametrize(
    "statement",
    [
        "Research and demonstration: not for clinical use.",
        "For research use only.",
        "Not for diagnosis.",
        "untrained placeholder: not for any clinical or research interpretation",
    ],
)
def test_wording_that_rules_out_diagnosis_is_recognised(statement: str) -> None:
    assert ModelCardSummary.of("m", "1", statement).not_for_diagnosis


def test_an_untrained_package_is_never_for_diagnosis() -> None:
    assert ModelCardSummary.of("m", "1", "Triage.", trained=False).not_for_diagnosis


def test_bundled_package_card() -> None:
    package = load_package(bundled_dir() / "cxr-default")
    summary = ModelCardSummary.from_package(package)
    assert (summary.name, summary.version) == (package.name, package.version)
    assert summary.intended_use == package.manifest.intended_use
    assert summary.card_intended_use  # the package ships MODEL_CARD.md
    assert summary.not_for_diagnosis
    assert "not for clinical use" in summary.statement
