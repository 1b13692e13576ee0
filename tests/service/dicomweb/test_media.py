"""Accept negotiation for DICOMweb answers."""

from __future__ import annotations

import pytest

from overread.service.dicomweb.media import MediaType, choose, parse_accept

INSTANCE = [MediaType.DICOM]
RENDERED = [MediaType.JPEG, MediaType.PNG]


@pytest.mark.parametrize(
    ("accept", "produced", "multipart", "expected"),
    [
        (None, INSTANCE, True, MediaType.DICOM),
        ("*/*", INSTANCE, True, MediaType.DICOM),
        ('multipart/related; type="application/dicom"', INSTANCE, True, MediaType.DICOM),
        ("multipart/related", INSTANCE, True, MediaType.DICOM),  # the default part type
        ('multipart/related; type="application/dicom+xml"', INSTANCE, True, None),
        ("application/dicom", INSTANCE, True, None),  # single part: not offered
        ("image/png", RENDERED, False, MediaType.PNG),
        ("image/*", RENDERED, False, MediaType.JPEG),
        ("image/gif", RENDERED, False, None),
        ("image/png;q=0.5, image/jpeg", RENDERED, False, MediaType.JPEG),
        ("image/png, image/jpeg;q=0", RENDERED, False, MediaType.PNG),
        ("application/json", [MediaType.DICOM_JSON], False, MediaType.DICOM_JSON),
        ("text/html", [MediaType.DICOM_JSON], False, None),
    ],
)
def test_choose(
    accept: str | None, produced: list[MediaType], multipart: bool, expected: MediaType | None
) -> None:
    chosen = choose(accept, produced, multipart=multipart)
    assert (chosen.media_type if chosen else None) == expected


def test_the_transfer_syntax_parameter_is_kept() -> None:
    chosen = choose(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
        INSTANCE,
        multipart=True,
    )
    assert chosen is not None and chosen.transfer_syntax == "1.2.840.10008.1.2.1"
    [entry] = parse_accept('multipart/related; type="a,b"')  # a comma inside quotes
    assert entry.parameters["type"] == "a,b"
