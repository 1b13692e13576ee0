"""Fixtures for the imaging tests: pydicom's own test corpus and synthetic files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom.data
import pytest

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


@pytest.fixture
def corpus() -> Callable[[str], Path]:
    """Path of one named file of pydicom's local test corpus (never downloads)."""

    def _path(name: str) -> Path:
        path = PYDICOM_FILES / name
        if not path.is_file():
            pytest.skip(f"{name} not in this pydicom's test files")
        return path

    return _path
