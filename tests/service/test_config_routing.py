"""Service configuration, routing rules and the object store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from overread.config import Settings, load_settings
from overread.errors import ConfigError, ServiceError
from overread.service.config import AllowedPeer, Destination, service_config
from overread.service.routing import InstanceFacts, Router
from overread.service.store import ObjectStore


def _config(tmp_path: Path, **overrides: object):
    return service_config(Settings(data_dir=tmp_path), **overrides)


def test_destination_and_peer_parsing() -> None:
    dest = Destination.parse("PACS=PACSAE@10.0.0.5:104")
    assert (dest.name, dest.ae_title, dest.host, dest.port) == ("PACS", "PACSAE", "10.0.0.5", 104)
    assert Destination.parse("ARCHIVE@host:11113").name == "ARCHIVE"
    for bad in (
        "PACS",
        "PACS=AE@host",
        "PACS=AE@host:port",
        "PACS=@host:104",
        "P=WAYTOOLONGAETITLE17@h:1",
    ):
        with pytest.raises(ConfigError, match="destination"):
            Destination.parse(bad)
    peer = AllowedPeer.parse("CR01@10.1.1.1")
    assert peer.admits("CR01", "10.1.1.1") and not peer.admits("CR01", "10.1.1.2")
    assert AllowedPeer.parse("ANY").admits("ANY", "anywhere")
    assert not AllowedPeer.parse("ANY").admits("OTHER", "anywhere")


def test_default_route_sends_chest_cr_and_dx_to_cxr_default(tmp_path: Path) -> None:
    config = _config(tmp_path)
    router = Router(config.routes)
    chest = InstanceFacts(modality="DX", body_part="CHEST")
    assert [p.model for p in router.plan([chest])] == ["cxr-default"]
    assert [p.model for p in router.plan([InstanceFacts(modality="cr", body_part="chest")])] == [
        "cxr-default"
    ]
    # CT goes to the nodule CAD (at its balanced operating point), not the HU threshold.
    assert [p.model for p in router.plan([InstanceFacts(modality="CT", body_part="CHEST")])] == [
        "ct-nodule-cad"
    ]
    assert router.plan([InstanceFacts(modality="DX", body_part="HAND")]) == []
    assert router.completes_on_release([chest])


def test_rules_combine_by_priority_and_destinations(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        destinations=["PACS=PACSAE@127.0.0.1:104", "ARCH=ARCHAE@127.0.0.1:105"],
        routes=[
            {
                "name": "chest",
                "modality": ["DX"],
                "models": ["cxr-default"],
                "destinations": ["PACS"],
            },
            {
                "name": "er-chest",
                "calling_ae": ["ER_DX"],
                "series_description": r"(?i)portable",
                "models": ["cxr-default", "cxr-triage"],
                "priority": 10,
                "destinations": ["ARCH"],
            },
            {"name": "sr", "sop_class_uid": ["1.2.840.10008.5.1.4.1.1.88.33"], "models": ["noop"]},
        ],
    )
    router = Router(config.routes)
    er = InstanceFacts(modality="DX", calling_ae="ER_DX", series_description="Chest PORTABLE AP")
    plan = {p.model: p for p in router.plan([er])}
    assert set(plan) == {"cxr-default", "cxr-triage"}
    assert plan["cxr-default"].priority == 10
    assert plan["cxr-default"].destinations == {"PACS", "ARCH"}
    assert plan["cxr-triage"].routes == ["er-chest"]
    not_portable = InstanceFacts(modality="DX", calling_ae="ER_DX", series_description="PA")
    assert [p.model for p in router.plan([not_portable])] == ["cxr-default"]
    # A study matches when any of its instances matches.
    sr = InstanceFacts(modality="SR", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33")
    assert {p.model for p in router.plan([sr, not_portable])} == {"cxr-default", "noop"}


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([{"name": "x", "models": []}], "route 'x' field models"),
        (
            [{"name": "x", "models": ["m"], "series_description": "("}],
            "not a valid regular expression",
        ),
        (
            [{"name": "x", "models": ["m"], "destinations": ["NOWHERE"]}],
            "unknown destination 'NOWHERE'",
        ),
        ([{"name": "x", "models": ["m"], "modalty": ["DX"]}], "route 'x' field modalty"),
        (
            [{"name": "x", "models": ["m"]}, {"name": "x", "models": ["n"]}],
            "route names must be unique",
        ),
    ],
)
def test_invalid_rules_are_refused_at_start(
    tmp_path: Path, routes: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, routes=routes)


def test_service_table_comes_from_overread_toml_and_cli_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "overread.toml").write_text(
        """
[dicom]
ae_title = "GATEWAY"
allow_ae = ["CR01@127.0.0.1"]

[service]
workers = 3
destinations = ["PACS=PACSAE@127.0.0.1:11113"]

[[service.routes]]
name = "all-dx"
modality = ["DX"]
models = ["cxr-default"]
complete_on_release = true
"""
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    config = service_config(load_settings(), workers=1)
    assert config.ae_title == "GATEWAY" and config.workers == 1
    assert config.allow_ae == [AllowedPeer(ae_title="CR01", host="127.0.0.1")]
    assert [r.name for r in config.routes] == ["all-dx"]
    assert config.destination("PACS").port == 11113
    assert config.database_url.startswith("sqlite:///")


def test_object_store_is_content_addressed_and_atomic(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    data = b"DICM" * 1000
    first = store.put(data)
    second = store.put(data)
    digest = hashlib.sha256(data).hexdigest()
    assert first.key == f"{digest[:2]}/{digest[2:]}" and first.created and not second.created
    assert store.read(first.key) == data and first.size == len(data)
    assert [p.name for p in (tmp_path / "objects" / digest[:2]).iterdir()] == [
        digest[2:]
    ]  # no temp files
    with pytest.raises(ServiceError, match="invalid object key"):
        store.path("../../etc/passwd")
    with pytest.raises(ServiceError, match="missing"):
        store.read("00/" + "0" * 62)


def test_serve_refuses_bad_configuration_with_one_line(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    status, _, err = run_cli("serve", "--data-dir", tmp_path, "--destination", "PACS=PACSAE@host")
    assert status == 2 and err.startswith("error: destination 'PACS=PACSAE@host'")
    status, _, err = run_cli("serve", "--data-dir", tmp_path, "--allow-ae", "A\\B")
    assert status == 2 and "--allow-ae" in err
    (tmp_path / "overread.toml").write_text(
        '[[service.routes]]\nname = "r"\nmodels = ["m"]\nview_positon = ["PA"]\n'
    )
    status, _, err = run_cli("serve", "--data-dir", tmp_path)
    assert status == 2 and "route 'r' field view_positon" in err


def test_serve_reports_a_busy_port(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, _, err = run_cli(
            "serve",
            "--data-dir",
            tmp_path,
            "--dicom-port",
            str(port),
            "--http-port",
            "0",
            "--workers",
            "0",
        )
    assert status == 2 and f"cannot listen for DICOM on 0.0.0.0:{port}" in err


def test_service_settings_come_from_the_environment_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    monkeypatch.setenv("OVERREAD_SERVICE__WORKERS", "3")
    monkeypatch.setenv(
        "OVERREAD_SERVICE__DESTINATIONS", "PACS=PACSAE@10.0.0.5:104,ARCH=ARCHAE@h:105"
    )
    monkeypatch.setenv("OVERREAD_DICOM__ALLOW_AE", '["CR01@10.1.1.1"]')
    config = service_config(load_settings())
    assert config.workers == 3
    assert [str(d) for d in config.destinations] == [
        "PACS=PACSAE@10.0.0.5:104",
        "ARCH=ARCHAE@h:105",
    ]
    assert config.allow_ae == [AllowedPeer(ae_title="CR01", host="10.1.1.1")]


def test_fhir_endpoints_from_urls_names_and_tables(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        fhir_endpoints=[
            "https://fhir.example.org/r4",
            "EHR=http://10.0.0.9:8080/fhir",
            {"name": "ris", "url": "https://ris.example.org/fhir", "bearer_token": "t0k"},
        ],
    )
    assert [str(e) for e in config.fhir_endpoints] == [
        "fhir=https://fhir.example.org/r4",
        "EHR=http://10.0.0.9:8080/fhir",
        "ris=https://ris.example.org/fhir",
    ]
    ris = config.fhir_endpoints[2]
    assert ris.bearer_token is not None and ris.bearer_token.get_secret_value() == "t0k"
    assert "t0k" not in repr(ris)
    with pytest.raises(ConfigError, match="FHIR endpoint 'ftp://x'"):
        _config(tmp_path, fhir_endpoints=["ftp://x"])
    with pytest.raises(ConfigError, match="FHIR endpoint names must be unique"):
        _config(tmp_path, fhir_endpoints=["A=http://a/fhir", "A=http://b/fhir"])


def test_model_signing_key_file_is_checked_at_start_and_reaches_the_registry(
    tmp_path: Path,
) -> None:
    from overread.errors import ModelPackageError
    from overread.service.runtime import RegistryPipelineProvider

    with pytest.raises(ConfigError, match=r"model_signing_key_file: .*cannot read it"):
        _config(tmp_path, model_signing_key_file=tmp_path / "missing.key")
    (tmp_path / "empty.key").write_text("\n")
    with pytest.raises(ConfigError, match="the file is empty"):
        _config(tmp_path, model_signing_key_file=tmp_path / "empty.key")
    key = tmp_path / "model.key"
    key.write_text("hospital-signing-key\n")
    config = _config(tmp_path, model_signing_key_file=key)
    provider = RegistryPipelineProvider.from_config(config)
    assert provider.registry.key == b"hospital-signing-key"
    # The shipped package is not signed with the hospital's key: refused.
    with pytest.raises(ModelPackageError, match="signing key"):
        provider.get("cxr-default")
    # A provider built without the key takes it from the first worker's configuration.
    late = RegistryPipelineProvider()
    late.configure(config)
    assert late.registry.key == b"hospital-signing-key"


def test_trusted_proxies_and_login_budgets_come_from_the_http_and_service_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    assert service_config(load_settings()).trusted_proxies == []  # none by default
    with pytest.raises(ConfigError, match=r"trusted_proxies: 'proxy\.example' is not an IP"):
        service_config(load_settings(), trusted_proxies=["proxy.example"])
    (tmp_path / "overread.toml").write_text(
        """
[http]
trusted_proxies = ["10.0.0.2", "192.168.10.7/24", "::1"]

[service]
login_account_budget = 3
login_address_ceiling = 200
"""
    )
    config = service_config(load_settings())
    assert config.trusted_proxies == ["10.0.0.2", "192.168.10.0/24", "::1"]
    assert (config.login_account_budget, config.login_address_budget) == (3, 50)
    assert config.login_address_ceiling == 200


def _rules(tmp_path: Path, routing: str = "all") -> Router:
    config = _config(
        tmp_path,
        routing=routing,
        routes=[
            {"name": "chest-dx", "modality": ["DX"], "body_part": ["CHEST"], "models": ["a"]},
            {"name": "any-dx", "modality": ["DX"], "models": ["b"]},
            {"name": "catch-all", "models": ["c"], "fallback": True},
        ],
    )
    return Router(config.routes, config.routing)


def test_first_match_mode_applies_only_the_first_matching_rule(tmp_path: Path) -> None:
    chest = InstanceFacts(modality="DX", body_part="CHEST")
    assert [p.model for p in _rules(tmp_path).plan([chest])] == ["a", "b"]
    assert [p.model for p in _rules(tmp_path, "first-match").plan([chest])] == ["a"]
    hand = InstanceFacts(modality="DX", body_part="HAND")
    assert [p.model for p in _rules(tmp_path, "first-match").plan([hand])] == ["b"]


def test_a_fallback_rule_applies_only_when_nothing_else_matches(tmp_path: Path) -> None:
    for mode in ("all", "first-match"):
        router = _rules(tmp_path, mode)
        assert [p.model for p in router.plan([InstanceFacts(modality="CT")])] == ["c"]
        assert "c" not in [p.model for p in router.plan([InstanceFacts(modality="DX")])]


def test_unknown_routing_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="routing"):
        _config(tmp_path, routing="best-guess")


def test_a_missing_tag_never_matches_unless_the_rule_lists_empty(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        routes=[
            {"name": "chest", "modality": ["DX"], "body_part": ["CHEST"], "models": ["a"]},
            {"name": "chest-or-unknown", "body_part": ["CHEST", ""], "models": ["b"]},
            {"name": "lateral", "series_description": "LAT", "models": ["d"]},
        ],
    )
    router = Router(config.routes)
    no_body_part = InstanceFacts(modality="DX")
    assert [p.model for p in router.plan([no_body_part])] == ["b"]
    explained = {e.route: e for e in router.explain([no_body_part], ["x.dcm"])}
    assert explained["chest"].matched is False
    [(label, checks)] = explained["chest"].instances
    assert label == "x.dcm"
    failing = [c for c in checks if not c.satisfied]
    assert [c.attribute for c in failing] == ["BodyPartExamined"]
    assert "missing" in failing[0].reason and 'list ""' in failing[0].reason
    assert explained["chest-or-unknown"].applied
    assert not explained["lateral"].matched  # a regex on a missing description
    assert "does not match /LAT/" in explained["lateral"].instances[0][1][0].reason


def test_explain_gives_each_rule_in_evaluation_order_with_why(tmp_path: Path) -> None:
    router = _rules(tmp_path, "first-match")
    explained = router.explain([InstanceFacts(modality="DX", body_part="CHEST")])
    assert [e.route for e in explained] == ["chest-dx", "any-dx", "catch-all"]
    assert [(e.matched, e.applied) for e in explained] == [
        (True, True),
        (True, False),
        (True, False),
    ]
    assert "first-match" in explained[1].note
    assert "fallback" in explained[2].note


def _dicom(path: Path, **tags: str) -> Path:
    import pydicom

    ds = pydicom.dcmread(Path(__file__).parents[2] / "src/overread/examples/CT_small.dcm")
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def test_route_explain_cli_reads_files_and_carries_on_past_bad_ones(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    chest = _dicom(tmp_path / "chest.dcm", Modality="DX", BodyPartExamined="CHEST")
    ct = _dicom(tmp_path / "ct.dcm", StudyInstanceUID="1.2.826.0.1.3680043.8.498.1")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    status, out, err = run_cli(
        "route", "--explain", chest, "--explain", ct, "--explain", tmp_path / "junk.dcm"
    )
    assert status == 1
    assert err.count("error:") == 1 and "junk.dcm" in err and "Traceback" not in err
    assert "applies chest-xray" in out and "plan: cxr-default" in out
    assert "Modality 'CT' is not one of [CR, DX]" in out

    status, out, _ = run_cli("route", "--explain", chest, "--json")
    assert status == 0
    report = json.loads(out)
    [study] = report["studies"]
    assert study["plan"][0]["model"] == "cxr-default"
    assert study["routes"][0]["applied"] is True

    status, out, _ = run_cli("route")
    assert status == 0 and "chest-xray [priority 0]" in out

    status, _, err = run_cli("route", "--explain", tmp_path / "junk.dcm")
    assert status == 2 and "no readable DICOM" in err
