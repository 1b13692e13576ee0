"""The ``[service.site_calibration]`` settings: which site a study is from, for choosing
the model package's per-site calibration (see :mod:`overread.inference.site_calibration`).

Example ``overread.toml``::

    [service.site_calibration]
    enabled = true                    # false: every study gets the global calibration
    source = "institution"            # or "station" or "calling_ae"
    sites = {"CR01" = "Riverside Medical Centre"}   # raw value -> the package's site name

The study's site is its first image's Institution Name (``institution``), Station
Name (``station``) or the calling AE title that sent it (``calling_ae``); ``sites``
maps a raw value to the name the package's calibration carries (several stations of
one hospital to one site, say). A value ``sites`` does not map is used as it is;
names are compared ignoring case and runs of spaces.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field


class CalibrationSiteSource(enum.StrEnum):
    """Which header or connection fact names a study's site."""

    INSTITUTION = "institution"
    STATION = "station"
    CALLING_AE = "calling_ae"


class SiteCalibrationSettings(BaseModel):
    """Per-site calibration in the running service."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="apply the model package's per-site calibration to studies of its "
        "sites (a package without one is served as it is)",
    )
    source: CalibrationSiteSource = Field(
        default=CalibrationSiteSource.INSTITUTION,
        description="where a study's site comes from: its Institution Name, its Station "
        "Name or the calling AE title that sent it",
    )
    sites: dict[str, str] = Field(
        default_factory=dict,
        description="raw institution, station or AE title -> the package's site name",
    )

    def site_of(self, *, institution: str, station: str, calling_ae: str) -> str:
        """The study's site name (``""`` when its source is empty)."""
        raw = {
            CalibrationSiteSource.INSTITUTION: institution,
            CalibrationSiteSource.STATION: station,
            CalibrationSiteSource.CALLING_AE: calling_ae,
        }[self.source].strip()
        wanted = " ".join(raw.split()).casefold()
        for value, site in self.sites.items():
            if " ".join(value.split()).casefold() == wanted:
                return site
        return raw


__all__ = ["CalibrationSiteSource", "SiteCalibrationSettings"]
