"""Triage settings: score weights, reading bands, critical findings, alert channels.

They live in the ``[triage]`` table of ``overread.toml`` (the working directory's, or
the file named by ``OVERREAD_CONFIG``) and are validated here, in one typed model,
so a typo in a weight fails at start-up with the setting's name rather than
silently ranking studies wrongly. Every default is documented in ``docs/triage.md``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, ValidationError, model_validator

from overread.errors import ConfigError
from overread.findings import CHEXPERT_LABELS, DEFAULT_CRITICAL, Finding


def _default_severity() -> dict[str, float]:
    # Points a certain finding adds: an immediately life-threatening finding
    # (pneumothorax) outranks everything the context can add; incidental or
    # non-pathological labels add nothing.
    return {
        Finding.NO_FINDING.value: 0.0,
        Finding.ENLARGED_CARDIOMEDIASTINUM.value: 30.0,
        Finding.CARDIOMEGALY.value: 15.0,
        Finding.LUNG_OPACITY.value: 20.0,
        Finding.LUNG_LESION.value: 35.0,
        Finding.EDEMA.value: 45.0,
        Finding.CONSOLIDATION.value: 40.0,
        Finding.PNEUMONIA.value: 45.0,
        Finding.ATELECTASIS.value: 10.0,
        Finding.PNEUMOTHORAX.value: 100.0,
        Finding.PLEURAL_EFFUSION.value: 40.0,
        Finding.PLEURAL_OTHER.value: 10.0,
        Finding.FRACTURE.value: 30.0,
        Finding.SUPPORT_DEVICES.value: 0.0,
    }


def _default_departments() -> dict[str, float]:
    # The field's example: emergency department +30, intensive care +15.
    return {"ed": 30.0, "emergency": 30.0, "icu": 15.0, "inpatient": 5.0, "outpatient": 0.0}


class ScoreWeights(BaseModel):
    """Weights of the priority score (see :func:`overread.triage.score_study`).

    Attributes
    ----------
    severity
        Points per finding label for a finding of probability 1; a finding adds
        ``severity * probability``. Labels not listed add nothing.
    proximity_weight
        A finding also adds ``severity * proximity_weight * threshold_proximity``: a
        severe finding too close to its threshold to call either way deserves a
        reader soon. ``uncertainty_weight``, its former name, is still read.
    departments
        Points by requesting department (matched case-insensitively).
    elderly_age, elderly_points, paediatric_age, paediatric_points
        Patients aged at least ``elderly_age`` or under ``paediatric_age`` years
        get the matching points (frailer patients deteriorate faster).
    points_per_waiting_hour, max_waiting_points
        Waiting time adds points linearly up to a cap, so no study waits forever
        yet waiting alone never outranks a likely critical finding.
    waiting_step_minutes
        Waiting time counts in whole steps of this many minutes (0: continuously), so
        a study's score changes only when its wait crosses a step and the periodic
        rescoring rewrites only the studies that crossed one.
    """

    model_config = {"extra": "forbid"}

    severity: dict[str, float] = Field(default_factory=_default_severity)
    proximity_weight: float = Field(
        default=0.25, ge=0, validation_alias=AliasChoices("proximity_weight", "uncertainty_weight")
    )
    departments: dict[str, float] = Field(default_factory=_default_departments)
    elderly_age: float = Field(default=75.0, ge=0)
    elderly_points: float = Field(default=10.0, ge=0)
    paediatric_age: float = Field(default=16.0, ge=0)
    paediatric_points: float = Field(default=10.0, ge=0)
    points_per_waiting_hour: float = Field(default=2.0, ge=0)
    max_waiting_points: float = Field(default=24.0, ge=0)
    waiting_step_minutes: float = Field(default=5.0, ge=0, le=1440)

    @model_validator(mode="after")
    def _check(self) -> ScoreWeights:
        for label, weight in self.severity.items():
            if label not in CHEXPERT_LABELS:
                raise ValueError(f"unknown finding {label!r} in severity weights")
            if weight < 0:
                raise ValueError(f"severity weight of {label!r} must be >= 0, got {weight}")
        for name, points in self.departments.items():
            if points < 0:
                raise ValueError(f"department points of {name!r} must be >= 0, got {points}")
        self.departments = {k.strip().lower(): v for k, v in self.departments.items()}
        if 0 < self.waiting_step_minutes < 1 / 60:
            raise ValueError(
                f"waiting_step_minutes must be 0 (continuous) or at least one second "
                f"(1/60), got {self.waiting_step_minutes}"
            )
        return self


def _default_critical() -> dict[str, float]:
    # Critical findings and the calibrated probability at which each raises an alert.
    thresholds = {label: 0.5 for label in sorted(DEFAULT_CRITICAL)}
    # A large effusion shows as a high-probability effusion call.
    thresholds[Finding.PLEURAL_EFFUSION.value] = 0.9
    return thresholds


class ChannelConfig(BaseModel):
    """One alert channel.

    ``level`` 0 channels are notified when an alert is raised; level ``n + 1``
    channels when a level ``n`` alert is not acknowledged in time (escalation).
    """

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=64)
    kind: Literal["webhook", "mqtt", "email"]
    level: int = Field(default=0, ge=0, le=9)
    # webhook
    url: str = ""
    # Name of an environment variable holding a shared secret: when set, each POST
    # carries ``X-Overread-Signature: sha256=<HMAC-SHA256 of the body>``.
    secret_env: str = ""
    # mqtt and email
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    # mqtt
    topic: str = "overread/alerts"
    qos: int = Field(default=1, ge=0, le=2)
    # email
    sender: str = "overread@localhost"
    recipients: list[str] = Field(default_factory=list)
    starttls: bool = False
    ca_file: str = ""  # CA bundle to verify the server with (default: the system's)
    username: str = ""
    password_env: str = ""  # environment variable holding the SMTP password
    timeout_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ChannelConfig:
        if self.kind == "webhook" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook channel {self.name!r} needs an http(s) url")
        if self.kind == "email" and not self.recipients:
            raise ValueError(f"email channel {self.name!r} needs at least one recipient")
        if self.port == 0:
            self.port = {"mqtt": 1883, "email": 25}.get(self.kind, 0)
        return self


class AlertSettings(BaseModel):
    """Critical-finding alerting: what raises an alert, where it goes, escalation."""

    model_config = {"extra": "forbid"}

    critical: dict[str, float] = Field(default_factory=_default_critical)
    channels: list[ChannelConfig] = Field(default_factory=list)
    suppress_minutes: float = Field(default=60.0, ge=0)
    escalate_after_minutes: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_seconds: float = Field(default=10.0, ge=0)
    max_backoff_seconds: float = Field(default=600.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> AlertSettings:
        for label, threshold in self.critical.items():
            if label not in CHEXPERT_LABELS:
                raise ValueError(f"unknown critical finding {label!r}")
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"alert threshold of {label!r} must be in [0, 1]")
        names = [c.name for c in self.channels]
        if len(names) != len(set(names)):
            raise ValueError("alert channel names must be unique")
        return self


class PrioritySettings(BaseModel):
    """Which finding puts a study in which reading band (a site setting).

    The worklist orders by band first (critical, then urgent, then routine) and by
    score within a band, so no sum of moderate findings can rank a study above one
    with a critical finding. Each table maps a finding to the calibrated probability
    at which it sets the band.

    Attributes
    ----------
    critical
        Findings that put a study in the critical band; absent (the default), the
        critical-alert thresholds (``[triage.alerts] critical``), so a study with an
        alert is always in the critical band.
    urgent
        Findings that put a study in the urgent band (default: none).
    """

    model_config = {"extra": "forbid"}

    critical: dict[str, float] | None = None
    urgent: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> PrioritySettings:
        for band, table in (("critical", self.critical or {}), ("urgent", self.urgent)):
            for label, threshold in table.items():
                if label not in CHEXPERT_LABELS:
                    raise ValueError(f"unknown finding {label!r} in the {band} band")
                if not 0.0 <= threshold <= 1.0:
                    raise ValueError(f"{band} threshold of {label!r} must be in [0, 1]")
        return self


class TriageConfig(BaseModel):
    """The ``[triage]`` table: score weights, reading bands and alerting."""

    model_config = {"extra": "forbid"}

    weights: ScoreWeights = Field(default_factory=ScoreWeights)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    priority: PrioritySettings = Field(default_factory=PrioritySettings)

    def band_thresholds(self) -> dict[str, dict[str, float]]:
        """``{"critical": {finding: threshold}, "urgent": {...}}`` as in force."""
        critical = (
            self.priority.critical if self.priority.critical is not None else self.alerts.critical
        )
        return {"critical": dict(critical), "urgent": dict(self.priority.urgent)}


def triage_config(values: dict[str, Any] | None = None) -> TriageConfig:
    """Validate a ``[triage]`` table (a dict) into a :class:`TriageConfig`.

    Raises
    ------
    ConfigError
        Naming the first invalid setting.
    """
    try:
        return TriageConfig.model_validate(values or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        where = f"triage.{where}" if where else "triage"
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None


def load_triage_config(path: str | Path | None = None) -> TriageConfig:
    """Read the ``[triage]`` table of a TOML file; defaults where it is absent.

    Parameters
    ----------
    path
        The file; default ``OVERREAD_CONFIG`` or ``./overread.toml``. A missing
        default file means all defaults; a missing named file is an error.
    """
    named = path is not None or "OVERREAD_CONFIG" in os.environ
    toml_path = (
        Path(path) if path is not None else Path(os.environ.get("OVERREAD_CONFIG", "overread.toml"))
    )
    if not toml_path.is_file():
        if named:
            raise ConfigError(f"{toml_path}: configuration file not found")
        return TriageConfig()
    try:
        document = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{toml_path}: cannot read configuration: {exc}") from None
    table = document.get("triage", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{toml_path}: [triage] must be a table")
    try:
        return triage_config(table)
    except ConfigError as exc:
        raise ConfigError(f"{toml_path}: {exc}") from None


__all__ = [
    "AlertSettings",
    "ChannelConfig",
    "PrioritySettings",
    "ScoreWeights",
    "TriageConfig",
    "load_triage_config",
    "triage_config",
]
