"""Onboarded models behind the gateway: a MONAI bundle, a TorchScript and an ONNX model
and a TorchXRayVision-layout DenseNet-121 state dict, each packaged, verified, imported
and routed; one phantom generator study sent with DCMTK storescu comes back from every
one of them as the same kind of SR the bundled model sends, received by DCMTK storescp."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from tests.models.foreign import (
    LABELS,
    write_monai_bundle,
    write_onnx,
    write_torchscript,
    write_xrv_state_dict,
)

from overread.gateway import Gateway
from overread.harness import storescu
from overread.models.manifest import SourceFormat
from overread.models.onboard import XRV_PATHOLOGIES, OnboardSpec, package_model
from overread.models.package import verify_package
from overread.models.registry import Registry
from overread.service.db import Job, Result
from overread.service.outputs.sr import UNCALIBRATED_NOTE
from overread.service.runtime import RegistryPipelineProvider

from .conftest import Storescp, needs_dcmtk, wait_until

pytestmark = [pytest.mark.service, pytest.mark.slow, needs_dcmtk]

ALIASES = {
    "onboard-bundle": "Chest-findings-demo",
    "onboard-ts": "ts-model",
    "onboard-onnx": "vendor",
    "onboard-xrv": "xrv-all",
}
ROUTES = [
    {
        "name": "chest",
        "modality": ["DX"],
        "models": ["cxr-default", *ALIASES],
        "complete_on_release": True,
    }
]


def _registry(root: Path) -> Registry:
    """Every foreign format packaged (uncalibrated), verified and imported under an alias."""
    sources = root / "sources"
    sources.mkdir()
    write_monai_bundle(sources / "bundle", size=64)
    write_torchscript(sources / "model.ts", size=64, sigmoid=True)
    write_onnx(sources / "vendor.onnx", size=64)
    write_xrv_state_dict(sources / "xrv.pt")
    labels = tuple(LABELS)
    jobs = [
        (SourceFormat.MONAI_BUNDLE, sources / "bundle", OnboardSpec(), None),
        (
            SourceFormat.TORCHSCRIPT,
            sources / "model.ts",
            OnboardSpec(name="ts-model", version="1.0", labels=labels, size=64),
            None,
        ),
        (
            SourceFormat.ONNX,
            sources / "vendor.onnx",
            OnboardSpec(name="vendor", version="2.1", labels=labels),
            None,
        ),
        (
            SourceFormat.STATE_DICT,
            sources / "xrv.pt",
            OnboardSpec(name="xrv-all", version="1.0", int8=False),
            "densenet121",
        ),
    ]
    registry = Registry(root / "registry")
    packages = {}
    for n, (fmt, path, spec, architecture) in enumerate(jobs):
        package = package_model(
            fmt, path, root / "packages" / str(n), spec, architecture=architecture
        )
        assert verify_package(package.path) == []
        registry.import_package(package.path)
        packages[package.name] = package
    for alias, name in ALIASES.items():
        registry.set_alias(alias, f"{name}@{packages[name].version}")
    return registry


def _texts(ds: pydicom.Dataset) -> str:
    """Every text value in an SR's content tree, one per line."""
    return "\n".join(
        str(elem.value) for elem in ds.iterall() if elem.VR in ("UT", "LT", "ST", "LO")
    )


def _jobs(service: Gateway) -> list[Job]:
    with service.database.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)).all())


def test_every_onboarded_format_reads_a_routed_study(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    tmp_path: Path,
) -> None:
    registry = _registry(tmp_path)
    service = make_service(
        routes=ROUTES,
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
        service_options={
            "registry": registry,
            "models": RegistryPipelineProvider(registry=registry),
        },
    )
    from overread.phantom import generate_cohort

    generate_cohort(tmp_path / "phantom", 1, 21, rows=256, cols=256, modality="DX")
    images = sorted((tmp_path / "phantom").rglob("*.dcm"))
    study = str(pydicom.dcmread(images[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(service.dicom_port or 0, images)
    models = 1 + len(ALIASES)

    def settled() -> bool:
        jobs = _jobs(service)
        return len(jobs) == 2 * models and all(
            j.state in ("succeeded", "dead_lettered", "held") for j in jobs
        )

    wait_until(settled, timeout=300)
    jobs = _jobs(service)
    assert [j.state for j in jobs] == ["succeeded"] * (2 * models), [
        (j.kind, j.model_name, j.state, j.last_error) for j in jobs
    ]
    wait_until(lambda: len(storescp.files()) == models, timeout=60)
    received = {
        str(ds.ManufacturerModelName): ds for ds in (pydicom.dcmread(f) for f in storescp.files())
    }
    assert set(received) == {"cxr-default", *ALIASES.values()}
    default = received["cxr-default"]
    for name in ALIASES.values():
        sr = received[name]
        # The same kind of object as the default model's: an SR of the same class and
        # template, for the same study, with one finding group per label.
        assert sr.SOPClassUID == default.SOPClassUID
        assert str(sr.StudyInstanceUID) == study
        assert sr.ContentTemplateSequence[0].TemplateIdentifier == (
            default.ContentTemplateSequence[0].TemplateIdentifier
        )
        text = _texts(sr)
        assert UNCALIBRATED_NOTE in text and "calibrated=false" in text
        assert UNCALIBRATED_NOTE not in _texts(default)
    with service.database.session() as session:
        results = session.scalars(select(Result)).all()
        by_model = {r.model_name: r.summary for r in results}
    xrv_findings = by_model["xrv-all"]["instances"][0]["findings"]
    assert [f["label"] for f in xrv_findings] == list(XRV_PATHOLOGIES)
    for name in ALIASES.values():
        instance = by_model[name]["instances"][0]
        assert instance["model"]["calibrated"] is False
        assert {f["threshold"] for f in instance["findings"]} == {0.5}
    assert "calibrated" not in by_model["cxr-default"]["instances"][0]["model"]
