"""The ``[service.monitoring]`` settings: how often the gateway runs monitoring, which
site a study belongs to, and the thresholds of the monitors.

Example ``overread.toml``::

    [service.monitoring]
    interval_seconds = 86400          # the running gateway's monitoring run (0: none)
    history_days = 90                 # observations replayed by each run
    cooldown_days = 30                # the same condition is not alerted again within
    site_source = "institution"       # or "calling_ae": where a study's site comes from
    sites = {"CT_NORTH" = "NGH", "North General" = "NGH"}   # AE title / institution -> site
    baseline_auc = {"Pneumothorax" = 0.90}  # when the model package records none
    auc_margin = 0.05
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field


class SiteSource(enum.StrEnum):
    """Which header or connection fact names a study's site when no mapping does."""

    INSTITUTION = "institution"
    CALLING_AE = "calling_ae"


class MonitoringSettings(BaseModel):
    """Monitoring in the running service (see the module and docs/monitoring.md)."""

    model_config = ConfigDict(extra="forbid")

    interval_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="seconds between two monitoring runs in the running gateway (0: none; "
        "`overread monitor run` still works); the first run comes one interval after start",
    )
    history_days: int = Field(
        default=90, ge=7, le=3650, description="days of observations each run replays"
    )
    cooldown_days: int = Field(
        default=30,
        ge=1,
        description="an alert of the same kind, subject and model is not routed again "
        "within this many days of the last one",
    )
    site_source: SiteSource = Field(
        default=SiteSource.INSTITUTION,
        description="where a study's site comes from when `sites` does not map it: the "
        "Institution Name of its header or the calling AE title",
    )
    sites: dict[str, str] = Field(
        default_factory=dict,
        description="calling AE title or Institution Name -> site code (the AE title "
        "is looked up first)",
    )
    baseline_auc: dict[str, float] = Field(
        default_factory=dict,
        description="validated AUC per label, used for a model whose package records "
        "no validation AUCs",
    )
    auc_margin: float = Field(
        default=0.05, ge=0, lt=0.5, description="tolerated AUC loss below the baseline"
    )
    min_labelled: int = Field(
        default=10,
        ge=2,
        description="a window is judged with at least this many labelled positives "
        "and as many negatives",
    )
    false_critical_budget: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="tolerated share of studies falsely called positive for a critical "
        "label (the triage critical thresholds' labels)",
    )
    reference_days: int = Field(
        default=14, ge=1, description="days at the start of a site's data forming its reference"
    )
    window_days: int = Field(
        default=7, ge=1, description="the rolling window compared with the reference"
    )
    min_studies: int = Field(
        default=30, ge=5, description="a site's window is tested with at least this many studies"
    )
    mmd_permutations: int = Field(
        default=100, ge=10, description="permutations of the embedding's MMD test"
    )
    fairness_attribute: str = Field(
        default="sex",
        pattern=r"^(sex|age_band|group|site)$",
        description="the subgroup attribute whose gaps are watched (sex, age_band, group, site)",
    )
    fairness_window_days: int = Field(
        default=30, ge=1, description="the window ending on the run's day the gaps are judged on"
    )
    fairness_tolerance: dict[str, float] = Field(
        default_factory=lambda: {"tpr": 0.2, "ece": 0.15},
        description="tolerated absolute gap per metric: tpr (equal opportunity), ece "
        "(calibration); an alert when a gap's whole interval lies outside it",
    )
    drift_studies_per_day: int = Field(
        default=50,
        ge=5,
        description="at most this many of a site's studies per day enter drift testing (a "
        "fixed sample by Study Instance UID): the MMD's cost grows with the square of its "
        "sample",
    )

    def site_of(self, calling_ae: str, institution: str) -> str:
        """The site code of a study sent by ``calling_ae`` from ``institution``."""
        for key in (calling_ae.strip(), institution.strip()):
            if key and key in self.sites:
                return self.sites[key]
        first = institution if self.site_source is SiteSource.INSTITUTION else calling_ae
        second = calling_ae if self.site_source is SiteSource.INSTITUTION else institution
        return (first.strip() or second.strip() or "unknown")[:64]


__all__ = ["MonitoringSettings", "SiteSource"]
