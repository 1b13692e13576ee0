"""Triage: which study to read first, critical-finding alerts, and reader feedback.

:func:`score_study` ranks a study from the model's findings and its context and says
why (a breakdown of terms); the worklist stores that per study; critical findings
raise alerts delivered by webhook, MQTT or e-mail with retries and escalation; and
readers' agree/disagree feedback is exported as a labelled dataset for retraining.
"""

from overread.triage.alerts import (
    SYSTEM_ACTOR,
    SweepReport,
    acknowledge,
    alert_message,
    backoff,
    deliver_due,
    escalate_due,
    raise_alerts,
    sweep,
    triage_prediction,
)
from overread.triage.channels import (
    AlertChannel,
    EmailChannel,
    MqttChannel,
    WebhookChannel,
    open_channel,
)
from overread.triage.config import (
    AlertSettings,
    ChannelConfig,
    ScoreWeights,
    TriageConfig,
    load_triage_config,
    triage_config,
)
from overread.triage.feedback import (
    EXTRA_COLUMNS,
    KEY_COLUMNS,
    export_feedback,
    record_feedback,
    verdict_label,
)
from overread.triage.schema import (
    Alert,
    AlertDelivery,
    AlertState,
    DeliveryState,
    Feedback,
    ReadState,
    Verdict,
    WorklistItem,
)
from overread.triage.score import (
    FindingLike,
    PriorityScore,
    ScoreTerm,
    StudyContext,
    context_terms,
    finding_terms,
    score_study,
)
from overread.triage.worklist import (
    StoredFinding,
    WorklistPage,
    claim_next,
    critical_findings,
    get_item,
    query_worklist,
    refresh_scores,
    set_read_state,
    upsert_prediction,
    upsert_study,
)

__all__ = [
    "EXTRA_COLUMNS",
    "KEY_COLUMNS",
    "SYSTEM_ACTOR",
    "Alert",
    "AlertChannel",
    "AlertDelivery",
    "AlertSettings",
    "AlertState",
    "ChannelConfig",
    "DeliveryState",
    "EmailChannel",
    "Feedback",
    "FindingLike",
    "MqttChannel",
    "PriorityScore",
    "ReadState",
    "ScoreTerm",
    "ScoreWeights",
    "StoredFinding",
    "StudyContext",
    "SweepReport",
    "TriageConfig",
    "Verdict",
    "WebhookChannel",
    "WorklistItem",
    "WorklistPage",
    "acknowledge",
    "alert_message",
    "backoff",
    "claim_next",
    "context_terms",
    "critical_findings",
    "deliver_due",
    "escalate_due",
    "export_feedback",
    "finding_terms",
    "get_item",
    "load_triage_config",
    "open_channel",
    "query_worklist",
    "raise_alerts",
    "record_feedback",
    "refresh_scores",
    "score_study",
    "set_read_state",
    "sweep",
    "triage_config",
    "triage_prediction",
    "upsert_prediction",
    "upsert_study",
    "verdict_label",
]
