"""The SR's content tree written straight to bytes (Explicit VR Little Endian).

Building a 14-finding TID 1500 tree with highdicom's template classes, then encoding
it with :func:`pydicom.dcmwrite`, touches about 1,850 elements in 540 nested data sets
one Python object at a time: 0.1-0.3 s per study, most of a chest X-ray's time in the
gateway. The tree has few shapes (TEXT, UIDREF, CODE, NUM, IMAGE and CONTAINER items)
and most of it never changes between studies: the coded concepts, the device
observer of a model package, the algorithm's name and version. So:

* the parts that depend on nothing but the model package and the character set (the
  language, the observer context, the procedure reported, each coded concept) are
  built once with highdicom, encoded once with pydicom and kept as bytes;
* the parts a study changes (a tracking identifier and UID, a probability, a
  threshold) are encoded here, item by item, into the same elements highdicom would
  have made; the image library and each image reference are built with highdicom per
  study (one per image, not per finding) and encoded with pydicom.

The result is the value of the root Content Sequence, kept in the document as a raw
element that :func:`pydicom.dcmwrite` copies as is and pydicom parses only when
someone reads it. Sequences and items written here have explicit lengths (PS3.5
7.5); those pydicom writes have undefined lengths: both are valid and mean the same.
``tests/service/outputs/test_sr_equivalence.py`` checks that the document equals the
one built with highdicom throughout, element by element.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import highdicom as hd
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.valuerep import DS

from overread.service.outputs.codes import Concept

#: Explicit VR Little Endian value representations with a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_ITEM = b"\xfe\xff\x00\xe0"

# Tags, as (group << 16) | element.
REFERENCED_SOP_SEQUENCE = 0x00081199
CODE_VALUE = 0x00080100
CODING_SCHEME_DESIGNATOR = 0x00080102
CODING_SCHEME_VERSION = 0x00080103
CODE_MEANING = 0x00080104
MAPPING_RESOURCE = 0x00080105
LONG_CODE_VALUE = 0x00080119
URN_CODE_VALUE = 0x00080120
MEASUREMENT_UNITS = 0x004008EA
RELATIONSHIP_TYPE = 0x0040A010
VALUE_TYPE = 0x0040A040
CONCEPT_NAME = 0x0040A043
CONTINUITY = 0x0040A050
UID = 0x0040A124
TEXT_VALUE = 0x0040A160
FLOATING_POINT_VALUE = 0x0040A161
CONCEPT_CODE = 0x0040A168
MEASURED_VALUE = 0x0040A300
NUMERIC_VALUE = 0x0040A30A
CONTENT_TEMPLATE = 0x0040A504
CONTENT_SEQUENCE = 0x0040A730
TEMPLATE_IDENTIFIER = 0x0040DB00


def element(tag: int, vr: str, value: bytes) -> bytes:
    """One data element: tag, VR, length and ``value`` padded to an even length."""
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def item(*elements: bytes) -> bytes:
    """One sequence item of the given elements (already in ascending tag order)."""
    body = b"".join(elements)
    return _ITEM + struct.pack("<I", len(body)) + body


def sequence(tag: int, items: Iterable[bytes]) -> bytes:
    """A sequence element (explicit length) of encoded items."""
    return element(tag, "SQ", b"".join(items))


class Encoder:
    """Encodes content items in one character set (the SR's Specific Character Set)."""

    def __init__(self, character_set: str | Sequence[str] | None) -> None:
        self.character_set = character_set
        self._encodings = convert_encodings(
            character_set
            if character_set is None or isinstance(character_set, str)
            else list(character_set)
        )

    def text(self, value: str) -> bytes:
        """``value`` in the document's character set."""
        if value.isascii():
            return value.encode("ascii")
        return encode_string(value, self._encodings)

    def code_item(self, concept: Concept) -> bytes:
        """A Code Sequence item as highdicom's :class:`~highdicom.sr.CodedConcept`
        writes it (Long Code Value or URN Code Value past 16 characters)."""
        return _code_item(concept, self.character_set)

    def header(self, relationship: str, value_type: str, name: Concept) -> bytes:
        """The first three elements of a content item."""
        return _header(relationship, value_type, name, self.character_set)

    def text_item(self, relationship: str, name: Concept, value: str) -> bytes:
        return item(
            self.header(relationship, "TEXT", name), element(TEXT_VALUE, "UT", self.text(value))
        )

    def uid_item(self, relationship: str, name: Concept, uid: str) -> bytes:
        return item(
            self.header(relationship, "UIDREF", name), element(UID, "UI", uid.encode("ascii"))
        )

    def code_content_item(self, relationship: str, name: Concept, value: Concept) -> bytes:
        return _code_content_item(relationship, name, value, self.character_set)

    def num_item(self, relationship: str, name: Concept, value: float, unit: Concept) -> bytes:
        """A NUM item of a float, as highdicom's :class:`~highdicom.sr.NumContentItem`
        makes it: Numeric Value (DS, auto-formatted) and Floating Point Value."""
        measured = item(
            sequence(MEASUREMENT_UNITS, [self.code_item(unit)]),
            element(FLOATING_POINT_VALUE, "FD", struct.pack("<d", value)),
            element(NUMERIC_VALUE, "DS", _ds(value)),
        )
        return item(self.header(relationship, "NUM", name), sequence(MEASURED_VALUE, [measured]))

    def container_item(
        self,
        relationship: str,
        name: Concept,
        children: Sequence[bytes],
        template_id: str | None = None,
    ) -> bytes:
        """A CONTAINER item (continuous) of encoded child items."""
        parts = [self.header(relationship, "CONTAINER", name), _CONTINUOUS]
        if template_id is not None:
            parts.append(_template(template_id))
        if children:
            parts.append(sequence(CONTENT_SEQUENCE, children))
        return item(*parts)

    def datasets(self, datasets: Iterable[Dataset]) -> list[bytes]:
        """Items of data sets built elsewhere (highdicom), encoded by pydicom."""
        return [encode_dataset_item(ds, self.character_set) for ds in datasets]


def encode_dataset_item(dataset: Dataset, character_set: str | Sequence[str] | None) -> bytes:
    """``dataset`` as one sequence item (Explicit VR Little Endian).

    The element types of SR content (strings, numbers, sequences) are encoded here;
    any other element is handed to pydicom's own writer. Equal to what
    :func:`pydicom.filewriter.write_dataset` writes, apart from sequence and item
    lengths, explicit here.
    """
    return item(_encode_elements(dataset, _hashable(character_set)))


_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR"})
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_NUMBER_STRING_VRS = frozenset({"DS", "IS"})
_BINARY_FORMATS = {"FD": "d", "FL": "f", "US": "H", "UL": "I", "SS": "h", "SL": "i"}


def _encode_elements(dataset: Dataset, character_set: Any) -> bytes:
    if "SpecificCharacterSet" in dataset:
        character_set = _hashable(dataset.SpecificCharacterSet)
    encoder: Encoder | None = None
    parts: list[bytes] = []
    for tag in sorted(dataset.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        elem = dataset.get_item(tag)
        vr = elem.VR
        value = elem.value
        if elem.is_raw or value is None or isinstance(value, bytes | bytearray):
            parts.append(_pydicom_element(elem, character_set))
        elif vr == "SQ":
            parts.append(
                sequence(int(tag), [item(_encode_elements(ds, character_set)) for ds in value])
            )
        elif vr == "UI":
            text = "\\".join(value) if _is_multi(value) else str(value)
            parts.append(element(int(tag), vr, text.encode("ascii")))
        elif vr in _STRING_VRS or vr in _TEXT_VRS:
            text = "\\".join(value) if _is_multi(value) else value
            if not isinstance(text, str):
                parts.append(_pydicom_element(elem, character_set))
                continue
            if not text.isascii():
                if vr not in _TEXT_VRS:
                    parts.append(_pydicom_element(elem, character_set))
                    continue
                encoder = encoder or Encoder(character_set)
                parts.append(element(int(tag), vr, encoder.text(text)))
                continue
            parts.append(element(int(tag), vr, text.encode("ascii")))
        elif vr in _NUMBER_STRING_VRS:
            values = list(value) if _is_multi(value) else [value]
            text = "\\".join(getattr(v, "original_string", None) or str(v) for v in values)
            parts.append(element(int(tag), vr, text.encode("ascii")))
        elif vr in _BINARY_FORMATS:
            values = list(value) if _is_multi(value) else [value]
            fmt = "<" + _BINARY_FORMATS[vr] * len(values)
            parts.append(element(int(tag), vr, struct.pack(fmt, *values)))
        else:
            parts.append(_pydicom_element(elem, character_set))
    return b"".join(parts)


def _is_multi(value: Any) -> bool:
    return isinstance(value, list | tuple | MultiValue)


def _pydicom_element(elem: Any, character_set: Any) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_data_element(buffer, elem, _parent_encoding(character_set))
    return buffer.getvalue()


def _parent_encoding(character_set: str | Sequence[str] | None) -> str | list[str]:
    if character_set is None:
        return "iso8859"
    if isinstance(character_set, str):
        return character_set
    return list(character_set)


def _ds(value: float) -> bytes:
    return str(DS(value, auto_format=True)).encode("ascii")


_CONTINUOUS = element(CONTINUITY, "CS", b"CONTINUOUS")


@lru_cache(maxsize=16)
def _template(template_id: str) -> bytes:
    return sequence(
        CONTENT_TEMPLATE,
        [
            item(
                element(MAPPING_RESOURCE, "CS", b"DCMR"),
                element(TEMPLATE_IDENTIFIER, "CS", template_id.encode("ascii")),
            )
        ],
    )


def _hashable(character_set: str | Sequence[str] | None) -> Any:
    return (
        character_set
        if character_set is None or isinstance(character_set, str)
        else tuple(character_set)
    )


@lru_cache(maxsize=4096)
def _code_item_cached(concept: Concept, character_set: Any) -> bytes:
    coded = hd.sr.CodedConcept(
        value=concept.value, scheme_designator=concept.scheme, meaning=concept.meaning
    )
    return encode_dataset_item(coded, character_set)


def _code_item(concept: Concept, character_set: str | Sequence[str] | None) -> bytes:
    return _code_item_cached(concept, _hashable(character_set))


@lru_cache(maxsize=4096)
def _header_cached(relationship: str, value_type: str, name: Concept, character_set: Any) -> bytes:
    return (
        element(RELATIONSHIP_TYPE, "CS", relationship.encode("ascii"))
        + element(VALUE_TYPE, "CS", value_type.encode("ascii"))
        + sequence(CONCEPT_NAME, [_code_item(name, character_set)])
    )


def _header(
    relationship: str, value_type: str, name: Concept, character_set: str | Sequence[str] | None
) -> bytes:
    return _header_cached(relationship, value_type, name, _hashable(character_set))


@lru_cache(maxsize=4096)
def _code_content_cached(
    relationship: str, name: Concept, value: Concept, character_set: Any
) -> bytes:
    return item(
        _header(relationship, "CODE", name, character_set),
        sequence(CONCEPT_CODE, [_code_item(value, character_set)]),
    )


def _code_content_item(
    relationship: str, name: Concept, value: Concept, character_set: str | Sequence[str] | None
) -> bytes:
    return _code_content_cached(relationship, name, value, _hashable(character_set))


def _memoized_iod_lookup(lookup: Any) -> Any:
    @lru_cache(maxsize=1024)
    def cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
        return bool(lookup(attribute, sop_class_uid, exclude_path_elements=exclude))

    def is_attribute_in_iod(
        attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
    ) -> bool:
        exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
        return cached(str(attribute), str(sop_class_uid), exclude)

    is_attribute_in_iod.__wrapped__ = lookup  # type: ignore[attr-defined]
    return is_attribute_in_iod


def memoize_highdicom_iod_lookups() -> None:
    """Remember highdicom's answers to "is this attribute in this SOP class's IOD?".

    highdicom answers it by scanning its tables of the standard on every call (two to
    four times per SR: whether the source image's IOD has pixel data, for the image
    library and the contributing equipment; whether the SR's has a Content Date), a
    quarter of the SR's build time once the content tree is encoded directly. The
    answer depends on the two names alone, so it is kept. Idempotent.
    """
    import importlib

    from highdicom import _standard_utils as standard

    original = standard.is_attribute_in_iod
    if hasattr(original, "__wrapped__"):
        return
    memoized = _memoized_iod_lookup(original)
    standard.is_attribute_in_iod = memoized  # does_iod_have_pixel_data calls it from here
    for name in ("highdicom.base", "highdicom.sr.content"):
        module = importlib.import_module(name)
        if getattr(module, "is_attribute_in_iod", None) is original:
            module.is_attribute_in_iod = memoized  # type: ignore[attr-defined]


__all__ = [
    "CONTENT_SEQUENCE",
    "Encoder",
    "element",
    "encode_dataset_item",
    "item",
    "memoize_highdicom_iod_lookups",
    "sequence",
]
