from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from overread.errors import ModelPackageError
from overread.models import load_package, resign_package, verify_package
from overread.models.manifest import MANIFEST_NAME


def test_written_package_verifies_and_loads(make_package: Callable[..., Path]) -> None:
    path = make_package(int8=True)
    package = load_package(path)
    assert package.name == "tiny-cxr" and package.version == "1.0.0"
    assert package.labels == ["Cardiomegaly", "Pneumothorax", "Support Devices"]
    assert set(package.manifest.files) == {"model.pt", "model.onnx", "model.int8.onnx"}
    assert package.manifest.cam == "onnx-output"
    # Verified codes travel with the labels; "Support Devices" has none.
    codes = {label.name: [c.value for c in label.codes] for label in package.manifest.labels}
    assert codes["Pneumothorax"] == ["36118008"] and codes["Support Devices"] == []
    assert package.thresholds("high sensitivity").tolist() == pytest.approx([0.2, 0.2, 0.2])
    net = package.build_network()
    assert sum(p.numel() for p in net.parameters()) > 0


def test_tampered_byte_is_refused(make_package: Callable[..., Path]) -> None:
    path = make_package()
    onnx_file = path / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match=r"model\.onnx: sha256 mismatch"):
        load_package(path)


def test_edited_manifest_is_refused(make_package: Callable[..., Path]) -> None:
    path = make_package()
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["operating_points"]["Pneumothorax"]["balanced"] = 0.01
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="manifest hash mismatch"):
        load_package(path)


def test_invalid_manifest_is_refused_with_the_field(make_package: Callable[..., Path]) -> None:
    path = make_package()
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["operating_points"]["Pneumothorax"]["balanced"] = 1.5
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="invalid manifest: operating_points"):
        load_package(path)
    del manifest["name"]
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="invalid manifest: name"):
        load_package(path)


def test_missing_and_unlisted_files_are_reported(make_package: Callable[..., Path]) -> None:
    path = make_package()
    (path / "model.pt").unlink()
    (path / "extra.onnx").write_bytes(b"not listed")
    problems = verify_package(path)
    assert any("model.pt: missing" in p for p in problems)
    assert any("extra.onnx: not listed" in p for p in problems)


def test_hmac_signature_needs_the_right_key(make_package: Callable[..., Path]) -> None:
    path = make_package(key=b"secret")
    assert load_package(path, key=b"secret").name == "tiny-cxr"
    with pytest.raises(ModelPackageError, match="HMAC mismatch"):
        load_package(path, key=b"other")
    unsigned = make_package("unsigned")
    with pytest.raises(ModelPackageError, match="no HMAC"):
        load_package(unsigned, key=b"secret")


def test_zip_package_loads(make_package: Callable[..., Path], tmp_path: Path) -> None:
    path = make_package()
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in path.iterdir():
            handle.write(file, f"tiny-cxr/{file.name}")
    package = load_package(archive)
    assert package.version == "1.0.0"
    assert (package.path / "model.onnx").is_file()


def test_resign_after_adding_a_file(make_package: Callable[..., Path]) -> None:
    path = make_package()
    shutil.copy(path / "model.onnx", path / "copy.onnx")
    assert verify_package(path)  # unlisted file
    resign_package(path, runtime={"torch_state_dict": "model.pt", "onnx_fp32": "copy.onnx"})
    assert verify_package(path) == []
    assert load_package(path).manifest.runtime.onnx_fp32 == "copy.onnx"


def test_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match=r"no manifest\.json"):
        load_package(tmp_path)
    with pytest.raises(ModelPackageError, match="no such model package"):
        load_package(tmp_path / "absent")


def test_label_codes_are_the_standard_codes_of_the_finding_table() -> None:
    from overread.findings import CHEXPERT_LABELS, FINDING_CODES
    from overread.models.package import _label_specs

    specs = {spec.name: spec.codes for spec in _label_specs(list(CHEXPERT_LABELS))}
    assert [(c.scheme, c.value) for c in specs["Consolidation"]] == [("SCT", "95436008")]
    for label in CHEXPERT_LABELS:
        code = FINDING_CODES[label]
        expected = [(code.scheme, code.value, code.meaning)] if code.is_standard else []
        assert [(c.scheme, c.value, c.meaning) for c in specs[label]] == expected
    assert specs["Support Devices"] == []  # local codes stay out of the manifest
