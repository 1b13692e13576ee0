"""Sites and scanners: who acquired a study, and how.

Each site has its own institution and station names, scanner make and model,
modality (DX or CR), detector, mix of referring departments and acquisition
profile; together these are the "site shift" a deployed model meets. A site
can also *drift*: from a given date its acquisition changes (a detector
replacement or new processing), which monitoring should detect.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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


DEFAULT_SITES: tuple[Site, ...] = (
    Site(
        code="NGH",
        institution="Northgate General Hospital",
        station="NGH-DX01",
        manufacturer="Acme Imaging",
        model="ClearView DR 43",
        modality="DX",
        detector_type="SCINTILLATOR",
        departments=(0.35, 0.15, 0.3, 0.2),
        monochrome1_fraction=0.0,
        acquisition=AcquisitionProfile(
            photons=24000, electronic_noise=0.006, blur=0.8, gamma=1.0, bits_stored=12
        ),
    ),
    Site(
        code="RMC",
        institution="Riverside Medical Centre",
        station="RMC-CR02",
        manufacturer="Kestrel Medical",
        model="KCR 3500",
        modality="CR",
        detector_type="STORAGE",
        departments=(0.3, 0.15, 0.35, 0.2),
        monochrome1_fraction=0.6,
        acquisition=AcquisitionProfile(
            photons=12000,
            electronic_noise=0.01,
            blur=1.5,
            gamma=0.85,
            window_low=0.0,
            window_high=3.6,
            pedestal=0.05,
            bits_stored=12,
            collimation=0.05,
            heel=0.07,
        ),
    ),
    Site(
        code="SCH",
        institution="St Catherine's Hospital",
        station="SCH-MOB03",
        manufacturer="Northwind Systems",
        model="MobileRad 7",
        modality="DX",
        detector_type="DIRECT",
        departments=(0.25, 0.45, 0.25, 0.05),
        monochrome1_fraction=0.1,
        acquisition=AcquisitionProfile(
            photons=9000,
            electronic_noise=0.008,
            blur=1.0,
            gamma=1.15,
            window_low=0.25,
            window_high=3.3,
            bits_stored=14,
            collimation=0.035,
        ),
    ),
    Site(
        code="LKC",
        institution="Lakeside Clinic",
        station="LKC-DX04",
        manufacturer="Orion Healthcare",
        model="OrionDR 1717",
        modality="DX",
        detector_type="SCINTILLATOR",
        departments=(0.1, 0.05, 0.15, 0.7),
        monochrome1_fraction=0.0,
        acquisition=AcquisitionProfile(
            photons=32000,
            electronic_noise=0.004,
            blur=0.6,
            gamma=0.95,
            window_low=0.05,
            window_high=3.5,
            bits_stored=16,
            collimation=0.01,
            heel=0.02,
        ),
    ),
)


def default_sites(n: int) -> tuple[Site, ...]:
    """The first ``n`` built-in sites (1..4)."""
    return DEFAULT_SITES[:n]
