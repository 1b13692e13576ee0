"""Small label files written by hand in each dataset's published format."""

from __future__ import annotations

from pathlib import Path

from overread.findings import CHEXPERT_LABELS
from overread.phantom.cohort import KEY_COLUMNS


def chexpert_row(path: str, values: dict[str, str], sex: str = "Female", age: str = "60") -> str:
    cells = [path, sex, age, "Frontal" if "frontal" in path else "Lateral", "AP"]
    cells += [values.get(label, "") for label in CHEXPERT_LABELS]
    return ",".join(cells)


CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS)

#: The phantom's key columns, after the labels in labels.csv and first in truth.csv.
PHANTOM_EXTRA = list(KEY_COLUMNS)


def write_dx(path: Path, pixels, photometric: str = "MONOCHROME2", patient_id: str = "PAT") -> Path:  # type: ignore[no-untyped-def]
    """A small 16-bit (12 bits stored) DX DICOM file, as the phantom generator writes."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    dx = "1.2.840.10008.5.1.4.1.1.1.1"
    arr = np.asarray(pixels, dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = dx
    ds.SOPClassUID = dx
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_phantom_cohort(
    root: Path, patients: int = 6, studies: int = 2, with_images: bool = False
) -> Path:
    """A cohort folder in the phantom contract's CSV format, written by hand.

    Labels cycle through 1/0/-1/blank; truth.csv holds the exact 0/1 labels.
    With ``with_images``, each row's image is a small 12-bit DX DICOM (48x40,
    a bright disc whose size depends on the row, on a noisy background).
    """
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    header = CHEXPERT_HEADER + "," + ",".join(PHANTOM_EXTRA)
    truth_header = "Path," + ",".join(PHANTOM_EXTRA) + ",Sex,Age," + ",".join(CHEXPERT_LABELS)
    noisy_values = ["1.0", "0.0", "-1.0", ""]
    labels_lines = [header]
    truth_lines = [truth_header]
    row = 0
    for p in range(patients):
        for s in range(studies):
            rel = f"images/patient{p:05d}/study{s + 1}/view1_frontal.dcm"
            sex = "F" if p % 2 else "M"
            site = f"site-{'ABC'[p % 3]}"
            extra = [
                f"PAT{p:05d}",
                f"1.2.826.0.1.{p}.{s}",
                f"1.2.826.0.1.{p}.{s}.1",
                f"1.2.826.0.1.{p}.{s}.1.1",
                "20240101",
                f"ACC{p}{s}",
                site,
                "ST1",
                "ACME",
                "ED",
                "group-a" if p % 2 else "group-b",
            ]
            noisy = [noisy_values[(row + j) % 4] for j in range(len(CHEXPERT_LABELS))]
            truth = ["1" if (row + j) % 4 in (0, 2) else "0" for j in range(len(CHEXPERT_LABELS))]
            labels_lines.append(",".join([rel, sex, str(40 + p), "Frontal", "PA", *noisy, *extra]))
            truth_lines.append(",".join([rel, *extra, sex, str(40 + p), *truth]))
            if with_images:
                rng = np.random.default_rng(row)
                yy, xx = np.mgrid[0:48, 0:40]
                disc = (yy - 24) ** 2 + (xx - 20) ** 2 < (4 + row % 12) ** 2
                pixels = rng.integers(200, 800, size=(48, 40)) + 3000 * disc
                write_dx(root / rel, pixels, patient_id=f"PAT{p:05d}")
            row += 1
    (root / "labels.csv").write_text("\n".join(labels_lines) + "\n")
    (root / "truth.csv").write_text("\n".join(truth_lines) + "\n")
    return root
