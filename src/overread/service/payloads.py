"""Typed job payloads: what an infer or export job carries in ``jobs.payload``.

The JSON each type writes is exactly what the queue has always stored, so jobs
queued by an older gateway are read as they are:

* infer: ``{"alias": ..., "destinations": [Destination, ...]}``, plus ``"model"``
  (the ``name@version`` to run instead of the alias's active version) and ``"role"``
  (``shadow``/``canary``/``active``) for a study routed during a rollout;
* DICOM export (C-STORE): ``{"destination": Destination, "result_id": ...}``, and
  ``"objects": [SOP Instance UID, ...]`` when only some of the result's objects go
  (a corrected SR after the others were delivered);
* FHIR export: ``{"fhir_endpoint": name, "result_id": ...}``;
* HL7 v2 export (ORU^R01 over MLLP): ``{"hl7_endpoint": name, "result_id": ...}``.
* STOW-RS export: ``{"stow_endpoint": name, "result_id": ...}`` (``"objects"`` as
  for DICOM).

The worker picks the exporter by the export payload's type, so nothing downstream
looks at the JSON's keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overread.errors import InferenceError
from overread.service.config import Destination
from overread.service.rollout import RolloutRole


@dataclass(frozen=True)
class InferPayload:
    """An infer job: the model alias to run and the DICOM destinations of its result;
    ``override_gate`` when a reader asked to analyse a study the input gate refused;
    ``model`` (``name@version``) and ``role`` when the alias is in a rollout
    (:mod:`overread.service.rollout`): a shadow's result is stored, never sent."""

    alias: str
    destinations: tuple[Destination, ...] = ()
    override_gate: bool = False
    model: str | None = None
    role: RolloutRole | None = None

    @property
    def model_ref(self) -> str:
        """What to run: the rollout's version, else the alias."""
        return self.model or self.alias

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON (``override_gate`` only when set: a reader's "analyse anyway")."""
        data: dict[str, Any] = {
            "alias": self.alias,
            "destinations": [d.model_dump(exclude_none=True) for d in self.destinations],
        }
        if self.override_gate:
            data["override_gate"] = True
        if self.model is not None:
            data["model"] = self.model
        if self.role is not None:
            data["role"] = self.role.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, default_alias: str) -> InferPayload:
        """Read a stored payload; ``default_alias`` (the job's model) when it names none."""
        return cls(
            alias=str(data.get("alias") or default_alias),
            destinations=tuple(Destination(**d) for d in data.get("destinations") or []),
            override_gate=bool(data.get("override_gate", False)),
            model=str(data["model"]) if data.get("model") else None,
            role=RolloutRole(str(data["role"])) if data.get("role") else None,
        )


def chosen_objects(artifacts: Sequence[Any], objects: tuple[str, ...]) -> list[Any]:
    """The stored objects of a result an export sends: those named in ``objects`` (by
    SOP Instance UID), every one when it names none."""
    if not objects:
        return list(artifacts)
    wanted = set(objects)
    return [a for a in artifacts if str(a.get("sop_instance_uid")) in wanted]


@dataclass(frozen=True)
class DicomExportPayload:
    """Send a result's stored DICOM objects to a DICOM node with C-STORE (only
    ``objects``, by SOP Instance UID, when it names any)."""

    destination: Destination
    result_id: int
    objects: tuple[str, ...] = ()

    def chosen(self, artifacts: Sequence[Any]) -> list[Any]:
        """The objects of the result this export sends."""
        return chosen_objects(artifacts, self.objects)

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON."""
        data: dict[str, Any] = {
            "destination": self.destination.model_dump(exclude_none=True),
            "result_id": self.result_id,
        }
        if self.objects:
            data["objects"] = list(self.objects)
        return data


@dataclass(frozen=True)
class FhirExportPayload:
    """POST a result's FHIR report to a configured FHIR endpoint (by name)."""

    fhir_endpoint: str
    result_id: int

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON."""
        return {"fhir_endpoint": self.fhir_endpoint, "result_id": self.result_id}


@dataclass(frozen=True)
class Hl7ExportPayload:
    """Send a result's ORU^R01 to a configured HL7 v2 endpoint (by name) over MLLP."""

    hl7_endpoint: str
    result_id: int

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON."""
        return {"hl7_endpoint": self.hl7_endpoint, "result_id": self.result_id}


@dataclass(frozen=True)
class StowExportPayload:
    """Store a result's DICOM objects on a configured DICOMweb server (by name) with
    STOW-RS (only ``objects``, by SOP Instance UID, when it names any)."""

    stow_endpoint: str
    result_id: int
    objects: tuple[str, ...] = ()

    def chosen(self, artifacts: Sequence[Any]) -> list[Any]:
        """The objects of the result this export sends."""
        return chosen_objects(artifacts, self.objects)

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON."""
        data: dict[str, Any] = {"stow_endpoint": self.stow_endpoint, "result_id": self.result_id}
        if self.objects:
            data["objects"] = list(self.objects)
        return data


ExportPayload = DicomExportPayload | FhirExportPayload | Hl7ExportPayload | StowExportPayload


def export_payload(data: Mapping[str, Any]) -> ExportPayload:
    """Read an export job's stored payload as its type.

    Raises
    ------
    InferenceError
        If the payload is neither kind (a job no worker can do: dead-lettered).
    """
    try:
        objects = tuple(str(uid) for uid in data.get("objects") or ())
        if "stow_endpoint" in data:
            return StowExportPayload(str(data["stow_endpoint"]), int(data["result_id"]), objects)
        if "fhir_endpoint" in data:
            return FhirExportPayload(str(data["fhir_endpoint"]), int(data["result_id"]))
        if "hl7_endpoint" in data:
            return Hl7ExportPayload(str(data["hl7_endpoint"]), int(data["result_id"]))
        return DicomExportPayload(
            Destination(**data["destination"]), int(data["result_id"]), objects
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InferenceError(f"export job payload {dict(data)!r} is not readable: {exc}") from None


__all__ = [
    "DicomExportPayload",
    "ExportPayload",
    "FhirExportPayload",
    "Hl7ExportPayload",
    "InferPayload",
    "StowExportPayload",
    "chosen_objects",
    "export_payload",
]
