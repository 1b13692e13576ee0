"""Ensemble packages (members named by hash) and derived package versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.models.conftest import tiny_package

from overread.errors import ModelPackageError
from overread.models import Registry, load_package, verify_package
from overread.models.manifest import MANIFEST_NAME
from overread.models.package import derive_package, write_ensemble_package


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny packages, written once for the module."""
    root = tmp_path_factory.mktemp("sources")
    return [
        tiny_package(root / version, version=version, seed=seed)
        for version, seed in (("1.0.0", 0), ("2.0.0", 1))
    ]


@pytest.fixture
def registry(tmp_path: Path, sources: list[Path]) -> Registry:
    registry = Registry(tmp_path / "registry", include_bundled=False)
    for source in sources:
        registry.import_package(source)
    return registry


def _members(registry: Registry) -> list:  # type: ignore[type-arg]
    return [registry.load("tiny-cxr@1.0.0"), registry.load("tiny-cxr@2.0.0")]


def test_ensemble_names_members_by_hash_and_resolves_them(
    registry: Registry, tmp_path: Path
) -> None:
    members = _members(registry)
    ensemble = write_ensemble_package(tmp_path / "ens", members, name="tiny-ens", version="1.0.0")
    assert verify_package(ensemble.path) == []
    section = ensemble.manifest.ensemble
    assert section is not None and [m.sha256 for m in section.members] == [
        m.sha256 for m in members
    ]
    assert ensemble.manifest.architecture == "ensemble" and ensemble.manifest.files == {}
    # Thresholds default to the members' mean.
    assert ensemble.thresholds().tolist() == pytest.approx([0.5, 0.5, 0.5])
    resolved = registry.ensemble_members(ensemble)
    assert [m.sha256 for m in resolved] == [m.sha256 for m in members]
    with pytest.raises(ModelPackageError, match="ensemble"):
        ensemble.build_network()


def test_a_member_is_found_by_hash_not_by_name(registry: Registry, tmp_path: Path) -> None:
    members = _members(registry)
    ensemble = write_ensemble_package(tmp_path / "ens", members, name="tiny-ens", version="1.0.0")
    # Move member 2.0.0 to another version number: the hash still finds it.
    moved = registry.root / "tiny-cxr" / "2.0.0"
    shutil.move(moved, registry.root / "tiny-cxr" / "elsewhere")
    assert registry.ensemble_members(ensemble)[1].sha256 == members[1].sha256


def test_a_missing_member_is_refused_in_one_line(registry: Registry, tmp_path: Path) -> None:
    ensemble = write_ensemble_package(
        tmp_path / "ens", _members(registry), name="tiny-ens", version="1.0.0"
    )
    shutil.rmtree(registry.root / "tiny-cxr" / "2.0.0")
    with pytest.raises(ModelPackageError) as caught:
        registry.ensemble_members(ensemble)
    message = str(caught.value)
    assert "\n" not in message
    assert "member tiny-cxr 2.0.0" in message and "missing" in message


def test_a_member_with_another_hash_does_not_count(registry: Registry, tmp_path: Path) -> None:
    ensemble = write_ensemble_package(
        tmp_path / "ens", _members(registry), name="tiny-ens", version="1.0.0"
    )
    # Replace member 2.0.0 by a different package with the same name and version.
    shutil.rmtree(registry.root / "tiny-cxr" / "2.0.0")
    registry.import_package(tiny_package(tmp_path / "impostor", version="2.0.0", seed=5))
    with pytest.raises(ModelPackageError, match=r"member tiny-cxr 2\.0\.0"):
        registry.ensemble_members(ensemble)


def test_an_edited_ensemble_manifest_is_refused(registry: Registry, tmp_path: Path) -> None:
    ensemble = write_ensemble_package(
        tmp_path / "ens", _members(registry), name="tiny-ens", version="1.0.0"
    )
    path = ensemble.path / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["ensemble"]["members"][1]["sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match="hash mismatch"):
        load_package(ensemble.path)


def test_ensemble_members_must_share_labels_and_input(registry: Registry, tmp_path: Path) -> None:
    one = registry.load("tiny-cxr@1.0.0")
    with pytest.raises(ModelPackageError, match="at least two"):
        write_ensemble_package(tmp_path / "e1", [one], name="e", version="1")
    with pytest.raises(ModelPackageError, match="exists"):
        write_ensemble_package(one.path, _members(registry), name="e", version="1")


def test_derive_package_writes_a_new_verified_version(registry: Registry, tmp_path: Path) -> None:
    source = registry.load("tiny-cxr@1.0.0")
    before = (source.path / MANIFEST_NAME).read_bytes()
    conformal = {
        "alpha": 0.1,
        "method": "class-conditional",
        "n": 10,
        "quantiles": {"Cardiomegaly": {"marginal": 0.4, "negative": 0.3, "positive": None}},
    }
    derived = derive_package(source, tmp_path / "derived", version="1.0.1", conformal=conformal)
    assert derived.version == "1.0.1" and derived.sha256 != source.sha256
    assert verify_package(derived.path) == []
    assert derived.manifest.conformal is not None and derived.manifest.conformal.alpha == 0.1
    assert (source.path / MANIFEST_NAME).read_bytes() == before  # never edited in place
    assert registry.import_package(derived.path).name == "1.0.1"
    with pytest.raises(ModelPackageError, match="new version"):
        derive_package(source, tmp_path / "again", version="1.0.0")
    with pytest.raises(ModelPackageError, match="exists"):
        derive_package(source, tmp_path / "derived", version="1.0.2")
    with pytest.raises(ModelPackageError, match="unknown labels"):
        derive_package(
            source,
            tmp_path / "bad",
            version="1.0.3",
            conformal=conformal | {"quantiles": {"Nope": {"marginal": 0.1}}},
        )
    assert not (tmp_path / "bad").exists()


def test_absent_optional_sections_leave_old_hashes_alone(registry: Registry) -> None:
    package = registry.load("tiny-cxr@1.0.0")
    text = (package.path / MANIFEST_NAME).read_text()
    for key in ("uncertainty", "conformal", "ensemble"):
        assert f'"{key}"' not in text


def test_ensemble_cli_writes_and_shows_members(
    run_cli, sources: list[Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "ens"
    status, stdout, err = run_cli(
        "models", "ensemble", *sources, "--name", "tiny-ens", "--version", "1.0.0", "--out", out
    )
    assert status == 0, err
    assert "2 members" in stdout and verify_package(out) == []
    status, stdout, err = run_cli("models", "show", out)
    assert status == 0, err
    assert "ensemble of: tiny-cxr 1.0.0" in stdout and "runtime files: none" in stdout
    status, _, err = run_cli(
        "models", "ensemble", sources[0], "--name", "e", "--version", "1", "--out", tmp_path / "one"
    )
    assert status == 2 and err.startswith("error: ") and "at least two" in err


def test_ensemble_cli_bad_out_and_repeated_member_are_one_line(
    run_cli, sources: list[Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_text("")
    named = ("--name", "e", "--version", "1.0.0")
    status, _, err = run_cli("models", "ensemble", *sources, *named, "--out", tmp_path / "file/x")
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {tmp_path / 'file/x'}: cannot write there")
    twice = (sources[0], sources[0])
    status, _, err = run_cli("models", "ensemble", *twice, *named, "--out", tmp_path / "e")
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ") and "the same member twice" in err
    assert not (tmp_path / "e").exists()
