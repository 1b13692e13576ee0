from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from overread.errors import ModelPackageError
from overread.models import Registry


def test_bundled_default_is_listed_and_verifies(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    entries = {(e.name, e.source) for e in registry.entries()}
    assert ("cxr-default", "bundled") in entries
    package = registry.load("cxr-default")
    assert package.runtime_file("fp32") is not None
    assert package.runtime_file("int8") is not None


def test_import_and_versions(make_package: Callable[..., Path], tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry", include_bundled=False)
    first = make_package("v1", version="1.0.0")
    registry.import_package(first)
    registry.import_package(make_package("v2", version="1.10.0", seed=1))
    assert registry.load("tiny-cxr").version == "1.10.0"  # 1.10 > 1.9 > 1.0
    assert registry.load("tiny-cxr@1.0.0").version == "1.0.0"
    # Importing the same package again is a no-op; a different one with the same version is refused.
    assert registry.import_package(first) == tmp_path / "registry" / "tiny-cxr" / "1.0.0"
    with pytest.raises(ModelPackageError, match="different package"):
        registry.import_package(make_package("v1-other", version="1.0.0", seed=5))
    with pytest.raises(ModelPackageError, match="no model package"):
        registry.load("tiny-cxr@9.9.9")


def test_aliases_switch_and_roll_back(make_package: Callable[..., Path], tmp_path: Path) -> None:
    root = tmp_path / "registry"
    service = Registry(root, include_bundled=False)
    admin = Registry(root, include_bundled=False)
    admin.import_package(make_package("v1", version="1.0.0"))
    admin.import_package(make_package("v2", version="2.0.0", seed=1))
    admin.set_alias("cxr-live", "tiny-cxr@1.0.0")
    assert service.load("cxr-live").version == "1.0.0"
    # Another process switches the alias; the running registry follows without restart.
    admin.set_alias("cxr-live", "tiny-cxr@2.0.0")
    assert service.load("cxr-live").version == "2.0.0"
    admin.set_alias("cxr-shadow", "tiny-cxr@1.0.0")
    assert service.aliases() == {"cxr-live": "tiny-cxr@2.0.0", "cxr-shadow": "tiny-cxr@1.0.0"}
    assert admin.rollback("cxr-live") == "tiny-cxr@1.0.0"
    assert service.load("cxr-live").version == "1.0.0"
    with pytest.raises(ModelPackageError, match="no earlier version"):
        admin.rollback("cxr-live")
    data = json.loads((root / "aliases.json").read_text())
    assert data["aliases"]["cxr-live"] == "tiny-cxr@1.0.0"
    with pytest.raises(ModelPackageError, match="no model package"):
        admin.set_alias("cxr-live", "tiny-cxr@3.0.0")


def test_alias_file_edited_by_hand_is_reread(
    make_package: Callable[..., Path], tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    registry = Registry(root, include_bundled=False)
    registry.import_package(make_package("v1", version="1.0.0"))
    registry.import_package(make_package("v2", version="2.0.0", seed=1))
    (root / "aliases.json").write_text(json.dumps({"aliases": {"live": "tiny-cxr@1.0.0"}}))
    assert registry.load("live").version == "1.0.0"
    (root / "aliases.json").write_text(json.dumps({"aliases": {"live": "tiny-cxr@2.0.0"}}) + " ")
    assert registry.load("live").version == "2.0.0"


def test_models_cli(
    make_package: Callable[..., Path], tmp_path: Path, run_cli, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("OVERREAD_DATA_DIR", str(tmp_path / "data"))  # the promotion's audit
    package = make_package("v1")
    status, out, _ = run_cli("models", "import", package)
    assert status == 0 and "imported tiny-cxr 1.0.0" in out
    status, out, _ = run_cli("models", "list")
    assert "tiny-cxr 1.0.0" in out and "cxr-default" in out
    status, out, _ = run_cli("models", "show", "tiny-cxr", "--json")
    shown = json.loads(out)
    assert Path(shown["path"]) == (tmp_path / "registry" / "tiny-cxr" / "1.0.0").resolve()
    status, out, _ = run_cli("models", "verify", "tiny-cxr")
    assert status == 0 and ": ok" in out
    status, out, _ = run_cli("models", "alias", "live", "tiny-cxr@1.0.0")
    assert status == 0 and "live -> tiny-cxr@1.0.0" in out
    # Tamper with one byte of the imported copy: verify names the file and exits 1.
    weights = tmp_path / "registry" / "tiny-cxr" / "1.0.0" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    status, _, err = run_cli("models", "verify", "live")
    assert status == 1 and "model.pt: sha256 mismatch" in err
    status, _, err = run_cli("models", "verify", str(package))
    assert status == 0
    status, _, err = run_cli("models", "show", "nothing-like-this")
    assert status == 2 and "no model package" in err


def test_manifests_are_parsed_again_only_when_they_change(
    make_package: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from overread.models import registry as registry_module

    root = tmp_path / "registry"
    registry = Registry(root, include_bundled=False)
    registry.import_package(make_package("v1", version="1.0.0"))
    parsed: list[Path] = []
    real = registry_module._parse_manifest

    def counting(path: Path) -> object:
        parsed.append(path)
        return real(path)

    monkeypatch.setattr(registry_module, "_parse_manifest", counting)
    first = registry.load("tiny-cxr")
    second = registry.load("tiny-cxr")
    assert second is first and second.sha256 == first.manifest.content_sha256()
    assert len(parsed) <= 1  # at most the first look; the second is served from the cache
    count = len(parsed)
    manifest = root / "tiny-cxr" / "1.0.0" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    os.utime(manifest, ns=(stamp + 10**9, stamp + 10**9))  # rewritten: read again
    assert registry.load("tiny-cxr").version == "1.0.0"
    assert len(parsed) > count and parsed[-1] == manifest.parent


def test_a_package_swapped_by_rename_with_the_same_manifest_mtime_is_read_anew(
    make_package: Callable[..., Path], tmp_path: Path
) -> None:
    import os
    import shutil

    root = tmp_path / "registry"
    registry = Registry(root, include_bundled=False)
    registry.import_package(make_package("v1", version="1.0.0"))
    old = registry.load("tiny-cxr")
    # Another build of the same name and version, copied in beside it keeping times
    # (as cp -a, rsync -a or tar -x would), then swapped in by two renames.
    installed = root / "tiny-cxr" / "1.0.0"
    staged = tmp_path / "staged"
    shutil.copytree(make_package("v1-other", version="1.0.0", seed=5), staged)
    stat = (installed / "manifest.json").stat()
    os.utime(staged / "manifest.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (staged / "manifest.json").stat().st_mtime_ns == stat.st_mtime_ns
    installed.rename(tmp_path / "retired")
    staged.rename(installed)
    new = registry.load("tiny-cxr")
    assert new is not old and new.sha256 != old.sha256
    assert registry.load("tiny-cxr@1.0.0").sha256 == new.sha256
