"""``overread send`` against a real DCMTK storescp."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from .conftest import Storescp, free_port, needs_dcmtk

pytestmark = [pytest.mark.service, needs_dcmtk]


def test_send_files_and_folders_to_storescp(
    run_cli: Callable[..., tuple[int, str, str]],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    single = dx_factory()
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        dx_factory().rename(folder / f"{i}.dcm")
    status, out, err = run_cli(
        "send",
        single,
        folder,
        "--to",
        f"PACSAE@127.0.0.1:{storescp.port}",
        "--calling-ae",
        "SENDER",
    )
    assert status == 0, err
    assert out.count(": sent (0x0000)") == 4 and "4/4 sent" in out
    received = storescp.files()
    assert len(received) == 4
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in received}
    assert pydicom.dcmread(single).SOPInstanceUID in uids


def test_send_reports_bad_files_and_exits_1(
    run_cli: Callable[..., tuple[int, str, str]],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    good = dx_factory()
    bad = tmp_path / "notes.txt"
    bad.write_text("not DICOM")
    status, out, err = run_cli("send", good, bad, "--to", f"PACSAE@127.0.0.1:{storescp.port}")
    assert status == 1
    assert f"{bad}: FAILED: not a DICOM file" in err
    assert "1/2 sent" in out
    assert len(storescp.files()) == 1


def test_send_to_nobody_fails_every_file(
    run_cli: Callable[..., tuple[int, str, str]], dx_factory: Callable[..., Path]
) -> None:
    status, _, err = run_cli(
        "send", dx_factory(), "--to", f"NOBODY@127.0.0.1:{free_port()}", "--timeout", "5"
    )
    assert status == 1
    assert "FAILED" in err


def test_send_rejects_a_malformed_destination(
    run_cli: Callable[..., tuple[int, str, str]], dx_factory: Callable[..., Path]
) -> None:
    status, _, err = run_cli("send", dx_factory(), "--to", "PACS-no-port")
    assert status == 2
    assert err.startswith("error: destination 'PACS-no-port'")
