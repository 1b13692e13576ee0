"""The rejection note (IHE IOCM) for an object withdrawn after it was sent.

When a reader corrects a result that already went out and decides a finding negative,
the SEG showing that finding is withdrawn. It is no longer sent, but the destinations
that received it still hold it. A Key Object Selection document titled "Rejected for
Quality Reasons" (DCM 113001) listing the withdrawn SEG is sent after it: an archive
that supports Imaging Object Change Management hides (and may delete) the instances
such a note lists; one that does not keeps the SEG, and the note beside it says that
it was withdrawn and by whom.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from overread.errors import ServiceError
from overread.service.outputs.sr import MANUFACTURER

#: SOP Class UID of the Key Object Selection Document.
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
#: The IOCM rejection title the gateway uses for an AI object a reader withdrew.
REJECTED_FOR_QUALITY = Code("113001", "DCM", "Rejected for Quality Reasons")
#: The series the rejection notes go in.
REJECTION_SERIES_NUMBER = 9915


def build_rejection_note(
    withdrawn: Sequence[Dataset],
    *,
    reader: str,
    reason: str,
) -> hd.ko.KeyObjectSelectionDocument:
    """A KOS "Rejected for Quality Reasons" listing ``withdrawn`` (the stored headers of
    the objects sent before, all of one study); ``reader`` (a DICOM Person Name) is the
    observer, ``reason`` its description."""
    if not withdrawn:
        raise ServiceError("a rejection note lists at least one object")
    studies = {str(ds.StudyInstanceUID) for ds in withdrawn}
    if len(studies) != 1:
        raise ServiceError("a rejection note lists the objects of one study")
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY,
        referenced_objects=list(withdrawn),
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=reader),
        ),
        description=reason[:1024] or None,
    )
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=list(withdrawn),
        content=content,
        series_instance_uid=generate_uid(),
        series_number=REJECTION_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
    )
    note.SeriesDescription = "overread withdrawn AI objects"
    return note


__all__ = [
    "KEY_OBJECT_SELECTION",
    "REJECTED_FOR_QUALITY",
    "REJECTION_SERIES_NUMBER",
    "build_rejection_note",
]
