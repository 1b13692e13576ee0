"""The demo's PACS: DCMTK's ``storescp`` when installed, else a pynetdicom SCP."""

from __future__ import annotations

from pathlib import Path

from overread.errors import ConfigError
from overread.harness import PacsLike, PynetdicomPacs, StorescpPacs, find_dcmtk_storescp

#: The demo's names for the harness's PACS.
DemoPacs = PynetdicomPacs
DemoPacsLike = PacsLike


def open_pacs(kind: str, out: Path) -> DemoPacsLike:
    """The PACS asked for: ``dcmtk``, ``pynetdicom``, or ``auto`` (DCMTK when installed)."""
    if kind in ("auto", "dcmtk"):
        executable = find_dcmtk_storescp()
        if executable is not None:
            return StorescpPacs(out, executable)
        if kind == "dcmtk":
            raise ConfigError("--pacs dcmtk: DCMTK's storescp is not installed")
    return DemoPacs(out)


__all__ = ["DemoPacs", "DemoPacsLike", "open_pacs"]
