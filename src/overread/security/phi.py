"""Removing protected health information from responses for roles without ``view_phi``.

A field is PHI if its name is one of :data:`PHI_FIELD_NAMES` (the DICOM patient and
visit identifiers the worklist carries) or if the model marks it with
``Field(json_schema_extra={"phi": True})``. Fields are removed, not blanked, so a
client cannot mistake an empty name for a real one, and nested models, lists and
dicts are walked. Redaction is by allow-listing the response model, never by
scrubbing free text: models must not put PHI in unmarked text fields.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from overread.security.accounts import Principal
from overread.security.roles import Permission, Role, has_permission

PHI_FIELD_NAMES: frozenset[str] = frozenset(
    {
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "birth_date",
        "patient_address",
        "patient_telephone",
        "other_patient_ids",
        "other_patient_names",
        "medical_record_number",
        "mrn",
        "accession_number",
        "referring_physician_name",
        "performing_physician_name",
        "patient_comments",
    }
)


@lru_cache(maxsize=256)
def phi_fields(model_cls: type[BaseModel]) -> frozenset[str]:
    """The names of ``model_cls``'s fields that are PHI."""
    found = set()
    for name, info in model_cls.model_fields.items():
        extra = info.json_schema_extra
        marked = isinstance(extra, dict) and bool(extra.get("phi"))
        if marked or name in PHI_FIELD_NAMES:
            found.add(name)
    return frozenset(found)


def _strip(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        hidden = phi_fields(type(value))
        return {
            key: _strip(getattr(value, key, None), item)
            for key, item in dumped.items()
            if key not in hidden
        }
    if isinstance(value, list | tuple) and isinstance(dumped, list):
        return [_strip(v, d) for v, d in zip(value, dumped, strict=False)]
    if isinstance(value, dict) and isinstance(dumped, dict):
        return {
            key: _strip(value.get(key), item)
            for key, item in dumped.items()
            if key not in PHI_FIELD_NAMES
        }
    return dumped


def redact_phi(model: BaseModel, viewer: Principal | Role | str) -> dict[str, Any]:
    """``model`` as JSON-ready data, without PHI fields unless ``viewer`` may see PHI.

    Parameters
    ----------
    model
        The response model instance.
    viewer
        The principal (or role) the response is for.
    """
    role = viewer.role if isinstance(viewer, Principal) else viewer
    dumped: dict[str, Any] = model.model_dump(mode="json")
    if has_permission(role, Permission.VIEW_PHI):
        return dumped
    stripped: dict[str, Any] = _strip(model, dumped)
    return stripped


__all__ = ["PHI_FIELD_NAMES", "phi_fields", "redact_phi"]
