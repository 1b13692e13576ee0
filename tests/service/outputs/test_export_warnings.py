"""A de-identified export keeps the warnings the pipeline words itself and replaces any
other warning text (a DICOM reader's message can echo a header value)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from overread.inference.lung_mask import airway_warning
from overread.service.exporters import export_deidentifier
from overread.service.outputs import codes as oc
from overread.service.outputs.volume import COMPREHENSIVE_3D_SR


def _warning_item(text: str) -> Dataset:
    return hd.sr.TextContentItem(
        name=oc.COMMENT.to_dicom(),
        value=f"Warning: {text}",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def test_generated_warnings_survive_de_identification_and_header_echoes_do_not() -> None:
    lung = np.ones((10, 10, 10), bool)
    airway = np.zeros_like(lung)
    airway[:, 2:8, 2:8] = True
    generated = airway_warning(airway, lung & ~airway)
    assert generated is not None
    echo = "Invalid value for VR UI: '1.2.3.JOHNDOE.19610304'"
    gap = "gap of 10 mm between slices at -120.5 and -110.5 mm (typical step 5 mm): about 1 missing slice(s)"
    ds = Dataset()
    ds.SOPClassUID = COMPREHENSIVE_3D_SR
    ds.ContentSequence = Sequence([_warning_item(t) for t in (generated, echo, gap)])
    out = export_deidentifier("site-secret", ("clean-structured-content",))(ds).dataset
    kept, replaced, gap_kept = (str(item.TextValue) for item in out.ContentSequence)
    assert kept == f"Warning: {generated}" and gap_kept == f"Warning: {gap}"
    assert "JOHNDOE" not in replaced
    # A generated form with header text spliced in is not generated.
    ds.ContentSequence = Sequence([_warning_item(generated + " " + echo)])
    out = export_deidentifier("site-secret", ("clean-structured-content",))(ds).dataset
    assert "JOHNDOE" not in str(out.ContentSequence[0].TextValue)


def test_the_pipelines_own_warnings_match_and_uid_like_numbers_do_not() -> None:
    from overread.inference.volume import MAX_NODULES
    from overread.models.blob_cad import CandidateSearch, truncation_warning
    from overread.service.outputs.volume import is_generated_warning

    lung = np.ones((4, 8, 8), dtype=bool)
    airway = np.zeros_like(lung)
    airway[:, :4] = True
    produced = [
        airway_warning(airway, lung),
        truncation_warning(CandidateSearch(candidates=[], peaks=900, examined=400), 400),
        f"{MAX_NODULES} or more nodule candidates: only the {MAX_NODULES} largest are "
        "reported (is the series a chest CT in HU?)",
        "the series is not axial (its slices do not run along the body's long axis): the "
        "classical lung mask's airway and dome rules were not applied",
        "slice positions drift in-plane (gantry tilt or sheared stack): the affine uses "
        "the mean step",
    ]
    for warning in produced:
        assert warning is not None and is_generated_warning(warning), warning
    # A dotted UID in a number's place is a header value, not a number.
    assert is_generated_warning("single slice: slice step taken as 2.5 mm")
    assert not is_generated_warning("single slice: slice step taken as 1.2.840.10008.5 mm")
    assert not is_generated_warning("uneven slice spacing: steps from 1.2.3.4 to 2.5 mm")
