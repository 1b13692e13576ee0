from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_version_lists_libraries(run_cli) -> None:
    status, out, _ = run_cli("version")
    assert status == 0
    assert out.startswith("overread ")
    assert "torch 2.13.0" in out


def test_config_reads_toml_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    (tmp_path / "overread.toml").write_text('default_model = "cxr-test"\n[dicom]\nport = 4242\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OVERREAD_DICOM__AE_TITLE", "FROMENV")
    status, out, _ = run_cli("config", "--json")
    assert status == 0
    data = json.loads(out)
    assert data["default_model"] == "cxr-test"
    assert data["dicom"]["port"] == 4242
    assert data["dicom"]["ae_title"] == "FROMENV"


def test_invalid_setting_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    (tmp_path / "overread.toml").write_text("[dicom]\nport = 99999\n")
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli("config")
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "dicom.port" in err and "Traceback" not in err


def test_console_script_no_traceback(tmp_path: Path) -> None:
    """The installed entry point prints one line and exits non-zero on a bad config."""
    (tmp_path / "overread.toml").write_text("this is = not [toml")
    proc = subprocess.run(
        [sys.executable, "-m", "overread", "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_triage_table_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    (tmp_path / "overread.toml").write_text("[triage]\n[triage.departments]\nED = 30\n")
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli("config", "--json")
    assert status == 0, err
    assert json.loads(out)["triage"]["departments"]["ED"] == 30
