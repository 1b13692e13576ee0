"""HL7 settings: endpoints from HOST:PORT, NAME=HOST:PORT or a table; the listener port;
a mistyped endpoint stops ``overread serve``/``worker`` with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from overread.config import Settings
from overread.errors import ConfigError
from overread.service.config import Hl7Endpoint, service_config
from overread.service.payloads import Hl7ExportPayload, export_payload


def test_endpoints_from_addresses_names_and_tables(tmp_path: Path) -> None:
    config = service_config(
        Settings(data_dir=tmp_path),
        hl7_endpoints=[
            "10.0.0.7:2575",
            "ris=ris.example.org:6661",
            {"name": "eng", "host": "10.0.0.9", "port": 2575, "receiving_application": "RIS"},
        ],
        hl7_listen_port=2575,
    )
    assert [str(e) for e in config.hl7_endpoints] == [
        "hl7=10.0.0.7:2575",
        "ris=ris.example.org:6661",
        "eng=10.0.0.9:2575",
    ]
    assert config.hl7_endpoints[2].receiving_application == "RIS"
    assert config.hl7_listen_port == 2575
    assert service_config(Settings(data_dir=tmp_path)).hl7_listen_port is None


@pytest.mark.parametrize("text", ["ris.example.org", "ris:port", "=host:1", "host:70000"])
def test_bad_endpoint_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="HL7 endpoint"):
        Hl7Endpoint.parse(text)


def test_endpoint_names_are_unique(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HL7 endpoint names must be unique"):
        service_config(Settings(data_dir=tmp_path), hl7_endpoints=["a=h:1", "a=h:2"])


def test_export_payload_round_trips() -> None:
    payload = Hl7ExportPayload("ris", 12)
    assert export_payload(payload.to_dict()) == payload


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_mistyped_endpoint_is_one_line(command: str, run_cli, tmp_path: Path) -> None:
    status, _, err = run_cli(
        command, "--data-dir", tmp_path / "data", "--hl7-endpoint", "ris.example.org"
    )
    assert status != 0 and err.startswith("error: ") and "HL7 endpoint" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
