"""DICOMweb over the stored data: QIDO-RS search, WADO-RS retrieve and rendering.

:mod:`~overread.service.dicomweb.query` reads a search request and matches values,
:mod:`~overread.service.dicomweb.archive` answers it from the ``instances`` rows and
the stored files, :mod:`~overread.service.dicomweb.rendering` turns frames into
bytes and pictures, and :mod:`~overread.service.dicomweb.media` reads ``Accept`` and writes the
``multipart/related`` bodies WADO-RS answers with. The web layer only maps HTTP onto
these.
"""

from __future__ import annotations

from overread.service.dicomweb.archive import (
    PHI_KEYWORDS,
    NotStoredError,
    StoredArchive,
    StoredInstance,
    strip_phi,
)
from overread.service.dicomweb.query import (
    QueryLevel,
    QueryParameterError,
    SearchQuery,
    parse_search,
)

__all__ = [
    "PHI_KEYWORDS",
    "NotStoredError",
    "QueryLevel",
    "QueryParameterError",
    "SearchQuery",
    "StoredArchive",
    "StoredInstance",
    "parse_search",
    "strip_phi",
]
