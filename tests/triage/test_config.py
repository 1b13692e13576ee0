"""The [triage] table: defaults, loading from overread.toml, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from overread.errors import ConfigError
from overread.findings import DEFAULT_CRITICAL
from overread.triage import TriageConfig, load_triage_config, triage_config


def test_defaults() -> None:
    config = TriageConfig()
    assert config.weights.departments["ed"] == 30
    assert config.weights.departments["icu"] == 15
    assert set(DEFAULT_CRITICAL) <= set(config.alerts.critical)
    assert config.alerts.critical["Pleural Effusion"] == 0.9


def test_loads_the_triage_table(tmp_path: Path) -> None:
    path = tmp_path / "overread.toml"
    path.write_text(
        """
[triage.weights]
points_per_waiting_hour = 5
departments = { ED = 40, ICU = 20 }

[triage.alerts]
critical = { Pneumothorax = 0.7 }
escalate_after_minutes = 5

[[triage.alerts.channels]]
name = "pager"
kind = "webhook"
url = "http://127.0.0.1:9/alerts"

[[triage.alerts.channels]]
name = "oncall-mail"
kind = "email"
level = 1
recipients = ["radiologist@example.org"]
""",
        encoding="utf-8",
    )
    config = load_triage_config(path)
    assert config.weights.points_per_waiting_hour == 5
    assert config.weights.departments == {"ed": 40, "icu": 20}
    assert config.alerts.critical == {"Pneumothorax": 0.7}
    assert [c.name for c in config.alerts.channels] == ["pager", "oncall-mail"]
    assert config.alerts.channels[1].port == 25


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    assert load_triage_config() == TriageConfig()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"weights": {"severity": {"Pneumothrax": 10}}}, "unknown finding 'Pneumothrax'"),
        ({"weights": {"elderly_points": -1}}, "triage.weights.elderly_points"),
        ({"alerts": {"critical": {"Pneumothorax": 1.5}}}, "must be in [0, 1]"),
        ({"alerts": {"channels": [{"name": "x", "kind": "webhook"}]}}, "needs an http(s) url"),
        ({"alerts": {"channels": [{"name": "x", "kind": "email"}]}}, "at least one recipient"),
        ({"colour": "red"}, "triage.colour"),
    ],
)
def test_invalid_settings_are_named(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid setting") as info:
        triage_config(table)
    assert message in str(info.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "overread.toml"
    path.write_text("[triage\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"overread\.toml: cannot read"):
        load_triage_config(path)


def test_overread_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[triage.alerts]\nsuppress_minutes = 5\n", encoding="utf-8")
    monkeypatch.setenv("OVERREAD_CONFIG", str(path))
    assert load_triage_config().alerts.suppress_minutes == 5
    monkeypatch.setenv("OVERREAD_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing\.toml: configuration file not found"):
        load_triage_config()
