"""What a reader's review makes of a result, as every output states it.

An AI result goes out *preliminary*: the SR ``UNVERIFIED``, the FHIR
DiagnosticReport ``preliminary``, the HL7 ORU result status ``P``. Once a reader has
accepted or corrected it, the same result is restated as *final* (SR ``VERIFIED``
with the Verifying Observer Sequence, FHIR ``final``, HL7 ``F``); a correction of a
result that already went out is *amended* (FHIR ``amended``, HL7 ``C``), and its SR
supersedes the one sent before (Predecessor Documents Sequence).

:class:`Verification` carries that statement from the review (its row in
``result_reviews``) to the builders of the SR, the FHIR bundle and the ORU, so each
says the same: the status, who verified it and when, and the findings the reader
changed. :func:`verification_of` reads it for a stored result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from overread.results import Decision, FindingResult, Prediction
from overread.service.db import ResultReview, ReviewState


class ReportStatus(StrEnum):
    """The status every output of a result states (FHIR's words)."""

    PRELIMINARY = "preliminary"
    """Not verified by a reader (AI only)."""
    FINAL = "final"
    """Verified by a reader; nothing that went out before is contradicted."""
    AMENDED = "amended"
    """Verified by a reader who changed what went out before."""

    @property
    def hl7(self) -> str:
        """OBR-25 / OBX-11 (HL7 table 0085/0123): ``P``, ``F`` or ``C`` (corrected)."""
        return _HL7_STATUS[self]


_HL7_STATUS = {
    ReportStatus.PRELIMINARY: "P",
    ReportStatus.FINAL: "F",
    ReportStatus.AMENDED: "C",
}


@dataclass(frozen=True)
class Verification:
    """A reader's verification of a result, as the outputs state it.

    Attributes
    ----------
    status
        ``final`` or ``amended`` (a preliminary result has no verification).
    observer_name
        The verifying reader as a DICOM Person Name (``Family^Given``).
    organization
        The organisation the reader verified for (DICOM Verifying Organization).
    verified_at
        When, in UTC.
    decisions
        The reader's decision for each finding label they changed.
    note
        The reader's free-text note ("" when none).
    """

    status: ReportStatus
    observer_name: str
    organization: str
    verified_at: datetime
    decisions: Mapping[str, Decision] = field(default_factory=dict)
    note: str = ""

    def apply(self, prediction: Prediction) -> Prediction:
        """``prediction`` with the reader's decisions in place of the model's."""
        return apply_decisions(prediction, self.decisions)

    @property
    def statement(self) -> str:
        """One paragraph for the report: who verified, what they changed, their note."""
        moment = self.verified_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        reader = self.observer_name.replace("^", " ").strip()
        parts = [f"Verified by {reader} ({self.organization}) on {moment}."]
        if self.decisions:
            changed = ", ".join(
                f"{label.lower()}: {decision.value}"
                for label, decision in sorted(self.decisions.items())
            )
            parts.append(f"Changed by the reader: {changed}.")
        if self.note:
            parts.append(f"Reader's note: {self.note}")
        return " ".join(parts)


def apply_decisions(prediction: Prediction, decisions: Mapping[str, Decision]) -> Prediction:
    """A copy of ``prediction`` whose findings named in ``decisions`` take the reader's
    decision (and ``positive`` with it); the model's probabilities stay as they were."""
    if not decisions:
        return prediction
    findings: list[FindingResult] = [
        f.with_values(decision=decisions[f.label], positive=decisions[f.label] is Decision.POSITIVE)
        if f.label in decisions
        else f
        for f in prediction.findings
    ]
    return dataclasses.replace(prediction, findings=findings)


def reader_person_name(username: str) -> str:
    """A user name as a DICOM Person Name: kept when it has components, else the family
    name (``"dr.smith"`` -> ``"dr.smith^"``)."""
    name = username.strip()[:64]
    return name if "^" in name else f"{name}^"


def stored_decisions(data: Mapping[str, Any]) -> dict[str, Decision]:
    """The reader's decisions as stored (``{label: "positive" | ...}``)."""
    return {str(label): Decision.parse(value) for label, value in data.items()}


def verification_from_review(review: ResultReview) -> Verification | None:
    """The verification a review row states (``None`` while it is not verified)."""
    if review.state not in (ReviewState.ACCEPTED.value, ReviewState.EDITED.value):
        return None
    moment = review.reviewed_at or review.updated_at
    if moment.tzinfo is None:  # SQLite hands back naive UTC
        moment = moment.replace(tzinfo=UTC)
    return Verification(
        status=ReportStatus(review.report_status),
        observer_name=reader_person_name(review.reviewer),
        organization=review.organization,
        verified_at=moment,
        decisions=stored_decisions(review.decisions or {}),
        note=review.note or "",
    )


def verification_of(session: Session, result_id: int) -> Verification | None:
    """The stored result's verification (``None``: unverified, as AI results go out)."""
    review = session.scalar(select(ResultReview).where(ResultReview.result_id == result_id))
    return None if review is None else verification_from_review(review)


__all__ = [
    "ReportStatus",
    "Verification",
    "apply_decisions",
    "reader_person_name",
    "stored_decisions",
    "verification_from_review",
    "verification_of",
]
