"""Triage: which study to read first, critical-finding alerts, and reader feedback.

:func:`score_study` ranks a study from the model's findings and its context and says
why (a breakdown of terms); the worklist stores that per study; critical findings
raise alerts delivered by webhook, MQTT or e-mail with retries and escalation; and
readers' agree/disagree feedback is exported as a labelled dataset for retraining.
"""

from overread.triage.config import (
    AlertSettings,
    ChannelConfig,
    ScoreWeights,
    TriageConfig,
    load_triage_config,
    triage_config,
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

__all__ = [
    "AlertSettings",
    "ChannelConfig",
    "FindingLike",
    "PriorityScore",
    "ScoreTerm",
    "ScoreWeights",
    "StudyContext",
    "TriageConfig",
    "context_terms",
    "finding_terms",
    "load_triage_config",
    "score_study",
    "triage_config",
]
