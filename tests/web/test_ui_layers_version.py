"""The viewer's layers are computed by the model version that read the study."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from overread.errors import ServiceError
from overread.web.ui.images import HeatmapImages


class _Models:
    """A provider whose alias has moved on to 2.0 while 1.0 is still installed."""

    def __init__(self, installed: dict[str, str]) -> None:
        self.installed = installed
        self.asked: list[str] = []

    def get(self, ref: str) -> Any:
        self.asked.append(ref)
        if ref not in self.installed:
            raise KeyError(f"no model package {ref!r}")
        return SimpleNamespace(model=SimpleNamespace(version=self.installed[ref]))


def _images(models: _Models) -> HeatmapImages:
    return HeatmapImages(SimpleNamespace(models=models))  # type: ignore[arg-type]


def test_the_alias_is_used_while_it_still_runs_the_results_version() -> None:
    models = _Models({"cxr": "1.0"})
    assert _images(models).pipeline("cxr", "cxr-net", "1.0").model.version == "1.0"
    assert models.asked == ["cxr"]


def test_a_moved_alias_is_bypassed_for_the_results_own_version() -> None:
    models = _Models({"cxr": "2.0", "cxr-net@1.0": "1.0"})
    assert _images(models).pipeline("cxr", "cxr-net", "1.0").model.version == "1.0"
    assert models.asked == ["cxr", "cxr-net@1.0"]


def test_a_version_no_longer_installed_is_refused_not_replaced() -> None:
    models = _Models({"cxr": "2.0"})
    with pytest.raises(
        ServiceError, match=r"cxr-net 1\.0, which read this study, is not available"
    ):
        _images(models).pipeline("cxr", "cxr-net", "1.0")
