"""The in-memory image every other part of overread works with.

An :class:`Image` is what :func:`overread.imaging.read` returns and what every
transform takes and gives back: float32 pixels in a fixed axis order, typed
metadata pulled out of the header once, the list of processing steps applied so
far (provenance, so a model's input can be explained), and the warnings raised
while reading. Keeping the pydicom header alongside lets later stages (SR and
overlay builders, de-identification) reach attributes the typed metadata does
not carry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


#: Header fields that name the patient beyond the ID; left out of ``to_dict`` by default.
IDENTITY_FIELDS = frozenset({"patient_name", "patient_birth_date"})


@dataclass(frozen=True)
class ImageMetadata:
    """Typed header values that the pipeline and the service rely on.

    Missing values are ``None`` (or empty tuples) rather than guessed. Values
    that describe the pixels as they are now (``photometric_interpretation``,
    ``samples_per_pixel``) are updated by the reader (YBR and palette colour
    become RGB) and by transforms that change them, so a transform can tell,
    for example, whether MONOCHROME1 inversion has already been done;
    ``stored_photometric_interpretation`` keeps what the file says.
    """

    source_path: str | None = None
    source_format: str = "dicom"
    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    patient_age: str | None = None
    issuer_of_patient_id: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view_position: str | None = None
    laterality: str | None = None
    study_date: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    derivation_description: str | None = None
    institution_name: str | None = None
    institutional_department_name: str | None = None
    requesting_service: str | None = None
    manufacturer: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    photometric_interpretation: str | None = None
    stored_photometric_interpretation: str | None = None
    samples_per_pixel: int = 1
    bits_allocated: int | None = None
    bits_stored: int | None = None
    pixel_representation: int | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    image_position: tuple[float, float, float] | None = None
    image_orientation: tuple[float, float, float, float, float, float] | None = None
    rows: int = 0
    columns: int = 0
    frames: int = 1
    transfer_syntax: str | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    rescale_type: str | None = None
    window_center: tuple[float, ...] = ()
    window_width: tuple[float, ...] = ()
    window_explanation: tuple[str, ...] = ()
    voi_lut_function: str | None = None
    has_voi_lut_sequence: bool = False
    presentation_lut_shape: str | None = None
    burned_in_annotation: str | None = None
    modality_lut_applied: str | None = None
    affine: tuple[tuple[float, ...], ...] | None = None

    def to_dict(self, *, identity: bool = False) -> dict[str, Any]:
        """Return a JSON-able dictionary of the fields.

        The patient's name and birth date (:data:`IDENTITY_FIELDS`) are left out
        unless ``identity`` is true: reports such as ``overread inspect --json`` are
        pasted into tickets, and need neither.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in IDENTITY_FIELDS and not identity:
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out


@dataclass
class Image:
    """Pixels plus what is known about them.

    Attributes
    ----------
    pixels
        float32 array: ``(rows, cols)`` for a single grey frame, ``(frames, rows,
        cols)`` for several; colour images add a trailing axis of 3 (RGB).
    metadata
        Typed header values (:class:`ImageMetadata`).
    provenance
        One human-readable record per step applied, in order, starting with how
        the file was read.
    warnings
        Problems found that did not stop the read (strictness ``warn``).
    dataset
        The pydicom header (without pixel data kept decoded), ``None`` for
        non-DICOM sources.
    value_range
        The nominal range of the pixel values after a step that fixes it (for
        example ``(0.0, 1.0)`` after a VOI window); ``None`` while values are in
        stored or modality units. Inversion uses it to flip around the right
        mid-point.
    """

    pixels: FloatArray
    metadata: ImageMetadata
    provenance: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dataset: Any = None
    value_range: tuple[float, float] | None = None

    @property
    def is_color(self) -> bool:
        """True when the pixels carry a trailing RGB axis."""
        return self.metadata.samples_per_pixel == 3

    @property
    def frame_count(self) -> int:
        """Number of frames held in :attr:`pixels`."""
        spatial = self.pixels.ndim - (1 if self.is_color else 0)
        return int(self.pixels.shape[0]) if spatial == 3 else 1

    def evolve(
        self,
        pixels: FloatArray,
        step: str,
        *,
        value_range: tuple[float, float] | object | None = dataclasses.MISSING,
        **metadata_changes: Any,
    ) -> Image:
        """Return a new image with new pixels and one more provenance record.

        The input image is left untouched, so a chain can be re-run on the
        same :class:`Image` (training augmentations, test-time variants).
        """
        meta = (
            dataclasses.replace(self.metadata, **metadata_changes)
            if metadata_changes
            else self.metadata
        )
        new_range = self.value_range if value_range is dataclasses.MISSING else value_range
        return Image(
            pixels=pixels,
            metadata=meta,
            provenance=[*self.provenance, step],
            warnings=list(self.warnings),
            dataset=self.dataset,
            value_range=new_range,  # type: ignore[arg-type]
        )


__all__ = ["FloatArray", "Image", "ImageMetadata"]
