"""Post-deployment monitoring: performance, label-free drift and fairness over time.

A deployed model degrades silently when a site changes a detector or its
population shifts. Monitoring keeps a small :class:`StudyObservation` per study,
compares recent periods with a reference (:mod:`.drift`), judges rolling windows
of labelled studies against the validated baseline (:mod:`.performance`) and
subgroup gaps against a tolerated band (:mod:`.fairness`), and reports what left
its bounds as typed :class:`Alert` objects. :mod:`.simulate` proves it on phantom
cohorts run through the bundled model.
"""

from overread.monitoring.alerts import Alert, AlertKind
from overread.monitoring.drift import DriftMonitor, DriftSettings, PrevalenceMonitor
from overread.monitoring.fairness import FairnessMonitor, FairnessSettings
from overread.monitoring.observations import StudyObservation, observe
from overread.monitoring.performance import PerformanceMonitor, PerformanceSettings

__all__ = [
    "Alert",
    "AlertKind",
    "DriftMonitor",
    "DriftSettings",
    "FairnessMonitor",
    "FairnessSettings",
    "PerformanceMonitor",
    "PerformanceSettings",
    "PrevalenceMonitor",
    "StudyObservation",
    "observe",
]
