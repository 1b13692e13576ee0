"""Query/retrieve settings: query peers and the query allow-list, from file and options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from overread.config import DicomSettings, Settings
from overread.errors import ConfigError
from overread.service.config import AllowedPeer, QueryPeer, service_config


def test_query_peers_and_allow_query_ae_are_read_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        dicom=DicomSettings(allow_query_ae=["VIEWER@10.0.0.30", "WS01"]),
        service={"query_peers": ["PACS=PACSAE@10.0.0.5:104", "VNA@vna.example.org:11112"]},
    )
    config = service_config(settings)
    assert config.query_peers == [
        QueryPeer(name="PACS", ae_title="PACSAE", host="10.0.0.5", port=104),
        QueryPeer(name="VNA", ae_title="VNA", host="vna.example.org", port=11112),
    ]
    assert config.allow_query_ae == [
        AllowedPeer(ae_title="VIEWER", host="10.0.0.30"),
        AllowedPeer(ae_title="WS01"),
    ]
    # the command line replaces the file's list
    override = service_config(settings, allow_query_ae=["OTHER"])
    assert override.allow_query_ae == [AllowedPeer(ae_title="OTHER")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PACS=PACSAE@10.0.0.5", "expected NAME=AE@host:port"),
        ("PACS=@10.0.0.5:104", "not a valid AE title"),
        ("PACS=PACSAE@10.0.0.5:70000", "less than or equal to 65535"),
    ],
)
def test_a_malformed_query_peer_is_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    settings = Settings(data_dir=tmp_path, service={"query_peers": [text]})
    with pytest.raises(ConfigError, match=message) as raised:
        service_config(settings)
    assert "query peer" in str(raised.value)


def test_fetch_refuses_bad_input_in_one_line(tmp_path: Path, run_cli: Any) -> None:
    data = str(tmp_path / "data")
    status, _, err = run_cli("fetch", "--from", "NOPE", "--study", "1.2.3", "--data-dir", data)
    assert status == 2
    assert err.strip() == (
        "error: --from 'NOPE': give AE@host:port or a query peer's name (none configured)"
    )
    status, _, err = run_cli("fetch", "--from", "PACS@127.0.0.1:104", "--data-dir", data)
    assert (status, err.strip()) == (2, "error: give --study UID (repeatable) or --patient ID")
    status, _, err = run_cli("fetch", "--from", "PACS@nowhere", "--study", "1", "--data-dir", data)
    assert status == 2 and err.startswith("error: query peer 'PACS@nowhere': expected")
