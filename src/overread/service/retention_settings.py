"""The ``[service.retention]`` settings: how long each class of data is kept, and the
disk-space watermarks below which new data is refused.

Kept apart from :mod:`overread.service.retention` (which deletes) so the typed
configuration can name them without importing the database layer.

Example ``overread.toml``::

    [service.retention]
    images_days = 30          # received images (instances and their stored files)
    results_days = 365        # model results and their SR/SEG objects
    jobs_days = 90            # finished jobs and exports (succeeded, dead-lettered)
    audit_min_days = 2190     # the audit's legal period: documented, never deleted
    interval_seconds = 3600   # the running gateway's clean-up
    disk_refuse_below_bytes = 1073741824
    disk_refuse_below_percent = 2.0
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

GIB = 1024**3

#: Keys that would ask retention to delete the audit trail: refused by name.
_AUDIT_DELETION_KEYS = frozenset({"audit_days", "audit_max_days", "audit_retention_days"})


class RetentionSettings(BaseModel):
    """Retention periods per data class and the disk watermarks (see the module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    images_days: int | None = Field(
        default=None,
        ge=1,
        description="delete a study's received images this many days after its last "
        "instance arrived (None: keep forever)",
    )
    results_days: int | None = Field(
        default=None,
        ge=1,
        description="delete model results and their SR/SEG objects this many days after "
        "they were made (None: keep forever)",
    )
    jobs_days: int | None = Field(
        default=None,
        ge=1,
        description="delete finished jobs and exports (succeeded, dead-lettered) this "
        "many days after they finished (None: keep forever)",
    )
    audit_min_days: int = Field(
        default=2190,
        ge=0,
        description="the audit trail's legal retention period, in days; retention never "
        "deletes the audit (this documents how long it must at least be kept)",
    )
    interval_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="seconds between two clean-ups in the running gateway (0: none; "
        "`overread retention run` still works)",
    )
    disk_refuse_below_bytes: int = Field(
        default=GIB,
        ge=0,
        description="refuse new data (C-STORE 0xA700, STOW-RS 507) while the data dir's "
        "file system has less free space than this (0: no byte watermark)",
    )
    disk_refuse_below_percent: float = Field(
        default=2.0,
        ge=0,
        le=100,
        description="refuse new data while less than this percentage is free (0: none)",
    )
    disk_warn_below_bytes: int = Field(
        default=5 * GIB,
        ge=0,
        description="log a warning while less than this is free (0: no byte watermark)",
    )
    disk_warn_below_percent: float = Field(
        default=10.0,
        ge=0,
        le=100,
        description="log a warning while less than this percentage is free (0: none)",
    )

    @model_validator(mode="before")
    @classmethod
    def _never_the_audit(cls, data: Any) -> Any:
        if isinstance(data, dict):
            asked = sorted(_AUDIT_DELETION_KEYS & set(data))
            if asked:
                raise ValueError(
                    f"{asked[0]}: retention never deletes the audit trail; "
                    "audit_min_days documents its legal period"
                )
        return data

    @property
    def deletes_anything(self) -> bool:
        """Whether any class has a retention period (else the clean-up has nothing to do)."""
        return any(d is not None for d in (self.images_days, self.results_days, self.jobs_days))


__all__ = ["GIB", "RetentionSettings"]
