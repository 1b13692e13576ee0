"""The gateway's lifecycle: what stops in which order."""

from __future__ import annotations

from pathlib import Path

import pytest

from overread.config import Settings
from overread.service.config import service_config

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")


def test_stop_closes_the_dicom_listener_before_waiting_for_the_triage_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.gateway import Gateway

    config = service_config(
        Settings(data_dir=tmp_path / "data"), dicom_port=0, http_port=0, workers=1
    )
    gateway = Gateway(config, artifacts=False)
    events: list[str] = []
    assert gateway.scp is not None
    monkeypatch.setattr(gateway.scp, "stop", lambda **_: events.append("dicom"))

    class Sweep:
        def join(self, timeout: float | None = None) -> None:
            events.append("triage")

    class Http:
        def stop(self) -> None:
            events.append("http")

    gateway._triage_thread = Sweep()  # type: ignore[assignment]
    gateway._http = Http()  # type: ignore[assignment]
    gateway.stop(timeout=1)
    assert events[:3] == ["dicom", "http", "triage"]
