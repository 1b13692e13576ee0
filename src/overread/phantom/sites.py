"""Sites and scanners: who acquired a study, and how.

Each site has its own institution and station names, scanner make and model,
modality (DX or CR), detector, mix of referring departments and acquisition
profile; together these are the "site shift" a deployed model meets. A site
can also *drift*: from a given date its acquisition changes (a detector
replacement or new processing), which monitoring should detect.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from overread.phantom.acquisition import AcquisitionProfile

#: Referring departments, as written in the CSVs.
DEPARTMENTS: tuple[str, ...] = ("ED", "ICU", "INPATIENT", "OUTPATIENT")

#: Department names written to InstitutionalDepartmentName / RequestingService.
DEPARTMENT_NAMES: dict[str, str] = {
    "ED": "Emergency Department",
    "ICU": "Intensive Care Unit",
    "INPATIENT": "Inpatient Ward",
    "OUTPATIENT": "Outpatient Clinic",
}


@dataclass(frozen=True)
class Site:
    """One hospital site with one chest X-ray scanner."""

    code: str
    institution: str
    station: str
    manufacturer: str
    model: str
    modality: str  # "DX" or "CR"
    detector_type: str  # DICOM Detector Type: SCINTILLATOR, DIRECT, STORAGE
    departments: tuple[float, float, float, float]  # ED, ICU, INPATIENT, OUTPATIENT
    monochrome1_fraction: float
    acquisition: AcquisitionProfile
    software: str = "1.0"
    drifted: bool = False

    def after_drift(self) -> Site:
        """This site after its acquisition change (new detector and processing)."""
        return replace(
            self,
            station=f"{self.station}-N",
            model=f"{self.model} Mk II",
            software="2.0",
            acquisition=self.acquisition.drifted(),
            monochrome1_fraction=1.0 - self.monochrome1_fraction,
            drifted=True,
        )


#: Who each built-in site is: one row per site.
_SITE_NAMES = """
code | institution                | station   | manufacturer      | model
NGH  | Northgate General Hospital | NGH-DX01  | Acme Imaging      | ClearView DR 43
RMC  | Riverside Medical Centre   | RMC-CR02  | Kestrel Medical   | KCR 3500
SCH  | St Catherine's Hospital    | SCH-MOB03 | Northwind Systems | MobileRad 7
LKC  | Lakeside Clinic            | LKC-DX04  | Orion Healthcare  | OrionDR 1717
"""

#: How each built-in site acquires: one column per site, so the sites compare at a
#: glance. Departments are the ED/ICU/INPATIENT/OUTPATIENT shares; the rows from
#: ``photons`` down are the :class:`AcquisitionProfile` fields.
_SITE_SCANNERS = """
parameter            | NGH               | RMC               | SCH                 | LKC
modality             | DX                | CR                | DX                  | DX
detector_type        | SCINTILLATOR      | STORAGE           | DIRECT              | SCINTILLATOR
departments          | 0.35/0.15/0.3/0.2 | 0.3/0.15/0.35/0.2 | 0.25/0.45/0.25/0.05 | 0.1/0.05/0.15/0.7
monochrome1_fraction | 0.0               | 0.6               | 0.1                 | 0.0
photons              | 24000             | 12000             | 9000                | 32000
electronic_noise     | 0.006             | 0.01              | 0.008               | 0.004
blur                 | 0.8               | 1.5               | 1.0                 | 0.6
gamma                | 1.0               | 0.85              | 1.15                | 0.95
window_low           | 0.1               | 0.0               | 0.25                | 0.05
window_high          | 3.45              | 3.6               | 3.3                 | 3.5
pedestal             | 0.02              | 0.05              | 0.02                | 0.02
bits_stored          | 12                | 12                | 14                  | 16
collimation          | 0.02              | 0.05              | 0.035               | 0.01
heel                 | 0.04              | 0.07              | 0.04                | 0.02
"""

_ACQUISITION_FIELDS = (
    "photons",
    "electronic_noise",
    "blur",
    "gamma",
    "window_low",
    "window_high",
    "pedestal",
    "bits_stored",
    "collimation",
    "heel",
)


def _rows(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("|")] for line in table.strip().splitlines()]


def _number(text: str) -> float:
    """An integer when written as one (photons, bits), else a float."""
    return int(text) if text.isdigit() else float(text)


def _built_in_sites() -> tuple[Site, ...]:
    names = {row[0]: row[1:] for row in _rows(_SITE_NAMES)[1:]}
    header, *parameters = _rows(_SITE_SCANNERS)
    sites = []
    for column, code in enumerate(header[1:], start=1):
        values = {row[0]: row[column] for row in parameters}
        institution, station, manufacturer, model = names[code]
        ed, icu, inpatient, outpatient = (float(x) for x in values["departments"].split("/"))
        profile: dict[str, Any] = {name: _number(values[name]) for name in _ACQUISITION_FIELDS}
        sites.append(
            Site(
                code=code,
                institution=institution,
                station=station,
                manufacturer=manufacturer,
                model=model,
                modality=values["modality"],
                detector_type=values["detector_type"],
                departments=(ed, icu, inpatient, outpatient),
                monochrome1_fraction=float(values["monochrome1_fraction"]),
                acquisition=AcquisitionProfile(**profile),
            )
        )
    return tuple(sites)


DEFAULT_SITES: tuple[Site, ...] = _built_in_sites()


def default_sites(n: int) -> tuple[Site, ...]:
    """The first ``n`` built-in sites (1..4)."""
    return DEFAULT_SITES[:n]
