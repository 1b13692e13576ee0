"""A chest radiograph through the gateway to the classifier and the lung-field package.

With a second rule for CR/DX, a study gets both models: the classifier's outputs and
the lung-field SEG (one frame on the radiograph's grid, referencing it) reach the PACS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import select

from overread.phantom import generate_cohort
from overread.service.db import Result

from .conftest import Storescp, job_states, needs_dcmtk, storescu, wait_until
from .outputs.conftest import dciodvfy_errors

pytestmark = [pytest.mark.service, needs_dcmtk]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
ROUTES = [
    {
        "name": "chest-xray",
        "modality": ["CR", "DX"],
        "body_part": ["CHEST"],
        "models": ["cxr-default"],
        "complete_on_release": True,
    },
    {
        "name": "chest-xray-lung-fields",
        "modality": ["CR", "DX"],
        "body_part": ["CHEST"],
        "models": ["cxr-lung-seg"],
        "complete_on_release": True,
    },
]


def test_a_radiograph_gets_the_classifier_and_a_lung_field_seg(
    make_service: Callable[..., Any], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(routes=ROUTES, destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    generate_cohort(tmp_path / "cohort", n=1, seed=51, rows=384, cols=384, workers=1)
    [film] = sorted((tmp_path / "cohort" / "images").rglob("*.dcm"))
    storescu(service.dicom_port, [film], called="OVERREAD", calling="MODALITY", timeout=60)
    wait_until(lambda: job_states(service) == ["succeeded"] * 4, timeout=240)
    with service.database.session() as session:
        models = sorted(r.model_name for r in session.scalars(select(Result)).all())
    assert models == ["cxr-default", "cxr-lung-seg"]
    image = pydicom.dcmread(film)
    segs = []
    for path in storescp.files():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.SOPClassUID) == SEGMENTATION_STORAGE and ds.SeriesNumber == 9914:
            segs.append(path)
    [path] = segs
    seg = hd.seg.segread(path)
    assert seg.get_source_image_uids()[0][2] == image.SOPInstanceUID
    assert (seg.Rows, seg.Columns) == (image.Rows, image.Columns)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lung-field"]
    assert dciodvfy_errors(path) == []
