"""The REST API's request and response models (they are its OpenAPI schema).

PHI fields are the names in :data:`overread.security.PHI_FIELD_NAMES` or fields
marked ``json_schema_extra={"phi": True}``; they are optional in the schema because
:func:`overread.security.redact_phi` removes them for roles without ``view_phi``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from overread.results import FindingResult

T = TypeVar("T")

#: A DICOM UID as a path or query parameter: digits and dots, at most 64 characters.
UID_PATTERN = r"^[0-9][0-9.]{0,63}$"


class Page(BaseModel, Generic[T]):
    """One page of a list, with the number of rows matching in all."""

    items: list[T]
    total: int = Field(ge=0)
    limit: int = Field(ge=1)
    offset: int = Field(ge=0)


class DestinationHealth(BaseModel):
    """One export destination: up or down (since when), and what waits for it."""

    name: str
    state: str
    down_since: str | None
    queued: int
    dead_lettered: int
    #: PHI: a destination's rejection can quote a header value.
    last_error: str | None = Field(default=None, json_schema_extra={"phi": True})


class Health(BaseModel):
    """Liveness and job counts; no patient data. ``destinations`` only for a signed-in
    caller (anonymous callers get the minimal answer)."""

    status: str
    version: str
    ae_title: str
    dicom_port: int | None
    jobs: dict[str, int]
    destinations: list[DestinationHealth] | None = None


class LoginRequest(BaseModel):
    """A password login."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class Me(BaseModel):
    """Who the caller is and what they may do."""

    username: str
    role: str
    via: str
    permissions: list[str]


class ScoreTermOut(BaseModel):
    """One term of a worklist score."""

    name: str
    contribution: float
    detail: str = ""


class FindingOut(BaseModel):
    """A finding as stored for a study (merged over its images)."""

    label: str
    probability: float
    positive: bool
    threshold_proximity: float = 0.0
    threshold: float | None = None
    trust_score: float | None = Field(
        default=None,
        description="explanation trust in [0, 1]: sqrt(map_concentration * deletion_drop); "
        "null when not computed (negative findings, or trust off)",
    )
    map_concentration: float | None = Field(
        default=None, description="Gini coefficient of the heatmap: 0 flat, towards 1 for a point"
    )
    deletion_drop: float | None = Field(
        default=None,
        description="relative fall of the probability with the heatmap's top region removed",
    )
    entropy: float | None = Field(default=None, description="predictive entropy in bits")
    mutual_information: float | None = Field(
        default=None, description="epistemic part of the entropy in bits"
    )
    conformal_set: str | None = Field(
        default=None, description="conformal prediction set: positive, negative, both or empty"
    )

    @classmethod
    def of(cls, finding: FindingResult) -> FindingOut:
        """The API view of a finding (an unknown threshold proximity reads as 0; the
        trust and uncertainty values not computed read as null)."""
        return cls(
            label=finding.label,
            probability=finding.probability,
            positive=finding.positive,
            threshold_proximity=finding.threshold_proximity or 0.0,
            threshold=finding.known_threshold,
            **finding.trust_dict(),
        )


class WorklistItemOut(BaseModel):
    """A study on the worklist: its priority, why, and its reading state."""

    study_instance_uid: str
    patient_id: str | None = Field(default=None, json_schema_extra={"phi": True})
    department: str
    patient_age: float | None = None
    received_at: datetime | None
    score: float
    breakdown: list[ScoreTermOut]
    findings: list[FindingOut]
    has_critical: bool
    critical_findings: list[str]
    review: str | None = Field(
        default=None,
        description="the review gate: pending (held, nothing sent), accepted, edited, "
        "rejected, released (sent unverified after its time-out), unreviewed (sent unverified)",
    )
    model_name: str
    model_version: str
    state: str
    reader: str
    scored_at: datetime
    updated_at: datetime
    priority: str = Field(
        default="routine", description="The reading band: critical, urgent or routine"
    )
    priority_source: str = Field(default="", description="Who set the band: ai, order, reader")
    analysis: str = Field(
        default="analysed",
        description="analysed, not analysed (the input gate refused it) or outside intended use",
    )
    gate_status: str = Field(default="", description="The input gate: pass, flag or refuse")
    #: PHI: a gate reason can quote a header value (a reader's message).
    gate_reasons: list[str] = Field(default_factory=list, json_schema_extra={"phi": True})
    gate_note: str = Field(
        default="", description='e.g. "not analysed: REASON"', json_schema_extra={"phi": True}
    )


class ClaimRequest(BaseModel):
    """Which study to claim next (filters are optional)."""

    model_config = ConfigDict(extra="forbid")

    department: str | None = Field(default=None, max_length=64)
    critical: bool | None = None


class ReadStateRequest(BaseModel):
    """A new reading state."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["unread", "in-progress", "read"]


class PriorityRequest(BaseModel):
    """A reading band set by a reader (or by an order, for the RIS)."""

    model_config = ConfigDict(extra="forbid")

    priority: Literal["routine", "urgent", "critical"]
    source: Literal["reader", "order"] = "reader"


class AcknowledgeRequest(BaseModel):
    """Closing the loop on a critical result: who was told, and a note."""

    model_config = ConfigDict(extra="forbid")

    communicated_to: str = Field(
        min_length=1,
        max_length=256,
        description="Who was told of the critical result (name, role, how); required",
    )
    note: str = Field(default="", max_length=4000, description="Free text")


class StudyOut(BaseModel):
    """A study as assembled by the gateway."""

    study_instance_uid: str
    state: str
    instance_count: int
    first_instance_at: datetime
    last_instance_at: datetime
    completed_at: datetime | None
    complete_reason: str
    images_purged_at: datetime | None = Field(
        default=None, description="when the retention policy deleted the study's images"
    )
    results_purged_at: datetime | None = Field(
        default=None, description="when the retention policy deleted the study's results"
    )


class SeriesOut(BaseModel):
    """One series of a study."""

    series_instance_uid: str
    modality: str
    body_part: str
    view_position: str
    series_description: str
    instance_count: int
    sop_class_uids: list[str]


class StudyDetail(StudyOut):
    """A study with its series and where it stands on the worklist."""

    series: list[SeriesOut]
    calling_aes: list[str]
    result_count: int
    worklist_state: str | None
    score: float | None


class InstanceFindingsOut(BaseModel):
    """One image's prediction summary within a result."""

    sop_instance_uid: str
    ok: bool
    #: PHI: the reader's or model's message can quote a header value.
    error: str | None = Field(default=None, json_schema_extra={"phi": True})
    findings: list[FindingOut]


class ResultOut(BaseModel):
    """A model's result on a study."""

    id: int
    job_id: int
    model_name: str
    model_version: str
    created_at: datetime
    instances: list[InstanceFindingsOut]
    artifacts: list[dict[str, Any]]


class StudyFindings(BaseModel):
    """A study's findings merged over its images, per model result."""

    study_instance_uid: str
    model_name: str
    model_version: str
    result_id: int
    findings: list[FindingOut]


class OverrideOut(BaseModel):
    """The infer jobs an "analyse anyway" queued for a study the input gate refused."""

    study_instance_uid: str
    jobs: list[int]


class CompleteOut(BaseModel):
    """The jobs an explicit "study complete" queued."""

    study_instance_uid: str
    jobs: list[int]


class FeedbackRequest(BaseModel):
    """A reader's verdict on one finding (``label`` only with verdict ``label``)."""

    model_config = ConfigDict(extra="forbid")

    finding: str = Field(min_length=1, max_length=64)
    verdict: Literal["agree", "disagree", "uncertain", "label"]
    label: Literal[1, 0, -1] | None = None


class FeedbackOut(BaseModel):
    """A stored verdict, with who gave it and when."""

    id: int
    study_instance_uid: str
    finding: str
    verdict: str
    label: float
    probability: float | None
    threshold: float | None
    threshold_proximity: float | None
    reader: str
    created_at: datetime


class AlertOut(BaseModel):
    """A critical-finding alert."""

    id: int
    study_instance_uid: str
    finding: str
    probability: float
    threshold: float
    department: str
    score: float
    state: str
    level: int
    raised_at: datetime
    last_seen_at: datetime
    duplicates: int
    escalated_at: datetime | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    findings: list[AlertFindingOut] = Field(default_factory=list)
    next_escalation_at: datetime | None = Field(
        default=None, description="When an open alert escalates next (null: it cannot)"
    )
    communicated_to: str | None = Field(default=None, description="Who was told (acknowledged)")
    note: str | None = None
    closed_at: datetime | None = Field(default=None, description="When the study was read")
    closed_by: str | None = None


class AlertFindingOut(BaseModel):
    """One critical finding of an alert (AI, not verified until a reader's verdict)."""

    finding: str
    probability: float
    threshold: float


class JobOut(BaseModel):
    """A job of the gateway's queue."""

    id: int
    study_instance_uid: str
    model_name: str
    model_version: str
    kind: str
    destination: str
    route: str
    state: str
    priority: int
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    error: str | None
    created_at: datetime | None
    updated_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class RequeueOut(BaseModel):
    """A job put back in the queue."""

    id: int
    state: str


class ModelPackageOut(BaseModel):
    """A model package in the registry (manifest read, not verified)."""

    name: str
    version: str
    source: str
    trained: bool
    #: False for an onboarded model not yet calibrated on local images (thresholds 0.5).
    calibrated: bool = True
    aliases: list[str]


class ModelList(BaseModel):
    """Every package and alias of the registry."""

    packages: list[ModelPackageOut]
    aliases: dict[str, str]


class ModelDetail(BaseModel):
    """One model: what a reference resolves to, and every version of its name."""

    reference: str
    resolves_to: str | None
    versions: list[ModelPackageOut]
    manifest: dict[str, Any] | None


class AliasRequest(BaseModel):
    """Point an alias at ``name@version`` (or a name: its highest version)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")


class AliasOut(BaseModel):
    """An alias after a change."""

    alias: str
    target: str
    previous: str | None


class AuditEventOut(BaseModel):
    """One record of the audit chain."""

    seq: int
    timestamp: str
    actor: str
    role: str
    action: str
    object_uids: list[str]
    details: dict[str, Any]
    prev_hash: str
    hash: str


class VerifyOut(BaseModel):
    """The outcome of recomputing the audit chain."""

    ok: bool
    count: int
    head_seq: int
    head_hash: str
    checkpoints_checked: int
    broken_seq: int | None
    reason: str | None
    message: str
    first_timestamp: str | None
    last_timestamp: str | None


__all__ = [
    "UID_PATTERN",
    "AlertOut",
    "AliasOut",
    "AliasRequest",
    "AuditEventOut",
    "ClaimRequest",
    "CompleteOut",
    "FeedbackOut",
    "FeedbackRequest",
    "FindingOut",
    "Health",
    "InstanceFindingsOut",
    "JobOut",
    "LoginRequest",
    "Me",
    "ModelDetail",
    "ModelList",
    "ModelPackageOut",
    "Page",
    "ReadStateRequest",
    "RequeueOut",
    "ResultOut",
    "ScoreTermOut",
    "SeriesOut",
    "StudyDetail",
    "StudyFindings",
    "StudyOut",
    "VerifyOut",
    "WorklistItemOut",
]
