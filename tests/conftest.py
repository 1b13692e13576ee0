"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from overread.cli import main


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run ``overread ARGS`` in-process; return (exit status, stdout, stderr)."""

    def _run(*args: str | Path) -> tuple[int, str, str]:
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return _run
