"""Monitoring alerts: one typed object whatever raised it.

The service routes an :class:`Alert` to the triage alert channels and writes it to
the audit log; monitoring itself only decides that something left its bounds and
keeps the evidence (the statistic, its threshold and the window it was computed on)
so that a reader of the alert can check it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum


class AlertKind(StrEnum):
    """What kind of change an alert reports."""

    PERFORMANCE = "performance"
    ACQUISITION_DRIFT = "acquisition_drift"
    OUTPUT_DRIFT = "output_drift"
    PREVALENCE = "prevalence"
    SUBGROUP_PERFORMANCE = "subgroup_performance"
    FAIRNESS = "fairness"


@dataclass(frozen=True)
class Alert:
    """One monitoring alert.

    Parameters
    ----------
    kind
        What changed.
    date
        The day whose data raised it (the last day of the window).
    subject
        What it is about, for example ``"site NGH"`` or ``"Pneumothorax, group D"``.
    statistic
        The name of the statistic that left its bounds (``"cusum"``, ``"auc_ci_high"``).
    value
        Its value.
    threshold
        The bound it crossed.
    message
        One line for a person.
    model
        ``name@version`` of the model concerned, when there is one.
    evidence
        Further figures (the window's size, the baseline, the top tests).
    """

    kind: AlertKind
    date: dt.date
    subject: str
    statistic: str
    value: float
    threshold: float
    message: str
    model: str = ""
    evidence: dict[str, float | str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready copy."""
        return {
            "kind": self.kind.value,
            "date": self.date.isoformat(),
            "subject": self.subject,
            "statistic": self.statistic,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "model": self.model,
            "evidence": dict(self.evidence),
        }


__all__ = ["Alert", "AlertKind"]
