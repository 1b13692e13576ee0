"""The ``chexpert-densenet121`` preset on a phantom rewritten in CheXpert's exact layout."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from overread.data import LabelPolicy, read_labels
from overread.errors import ConfigError
from overread.findings import CHEXPERT_LABELS
from overread.training import load_config, preset_names

REPO = Path(__file__).resolve().parents[2]
REAL_CHEXPERT = REPO / ".cache" / "testdata" / "torchxrayvision" / "chexpert_train.csv.gz"
HAS_PHANTOM = importlib.util.find_spec("overread.phantom") is not None
needs_phantom = pytest.mark.skipif(not HAS_PHANTOM, reason="phantom generator not installed")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from overread.phantom import CohortOptions, write_cohort
    from overread.phantom.chexpert import write_chexpert_layout

    base = tmp_path_factory.mktemp("chexpert")
    write_cohort(base / "phantom", CohortOptions(n=40, seed=5, rows=96, cols=96, workers=1))
    return write_chexpert_layout(base / "phantom", base / "root", valid_fraction=0.3)


def test_preset_is_the_papers_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "chexpert-densenet121" in preset_names()
    cfg = load_config(preset="chexpert-densenet121")
    assert cfg.model.architecture == "densenet121"
    assert cfg.data.format == "chexpert" and cfg.data.size == 320
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == (1e-4, 16, 3)
    assert cfg.optim.weight_decay == 0 and cfg.optim.schedule == "constant"
    assert LabelPolicy.parse(cfg.data.policy) == LabelPolicy.chexpert_paper()
    assert cfg.data.labels_csv == tmp_path / "CheXpert-v1.0-small" / "train.csv"
    assert cfg.data.valid_csv == tmp_path / "CheXpert-v1.0-small" / "valid.csv"
    assert set(cfg.data.focus_labels) == {
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion",
    }  # fmt: skip
    shipped = REPO / "src" / "overread" / "training" / "presets" / "chexpert-densenet121.toml"
    assert (REPO / "configs" / "chexpert-densenet121.toml").read_text() == shipped.read_text()


def test_valid_csv_replaces_the_validation_split() -> None:
    with pytest.raises(ConfigError, match="middle"):
        load_config(preset="chexpert-densenet121", overrides={"data.split": [0.8, 0.1, 0.1]})
    with pytest.raises(ConfigError, match="views"):
        load_config(preset="chexpert-densenet121", overrides={"data.views": "lateral"})


@needs_phantom
def test_layout_is_chexpert_exactly(layout) -> None:  # type: ignore[no-untyped-def]
    train_header = layout.train_csv.read_text().splitlines()[0]
    if REAL_CHEXPERT.is_file():
        with gzip.open(REAL_CHEXPERT, "rt") as fh:
            assert train_header == fh.readline().rstrip("\n")
    assert train_header.split(",")[5:] == list(CHEXPERT_LABELS)
    train = read_labels("chexpert", layout.train_csv, root=layout.root)
    valid = read_labels("chexpert", layout.valid_csv, root=layout.root)
    assert not train.skipped and not valid.skipped
    assert len(train) == layout.n_train and len(valid) == layout.n_valid
    assert set(train.frame["split"]) == {"train"} and set(valid.frame["split"]) == {"valid"}
    assert not set(train.frame["patient_id"]) & set(valid.frame["patient_id"])
    # The labeller's uncertain and blank cells in train; radiologists' 0/1 in valid.
    assert (train.raw == -1).any() and np.isnan(train.raw).any()
    assert set(np.unique(valid.raw).tolist()) <= {0.0, 1.0}
    first = Path(str(train.frame["path"].iat[0]))
    assert first.parts[:2] == ("CheXpert-v1.0-small", "train") and first.suffix == ".jpg"
    assert first.name == "view1_frontal.jpg" and (layout.root / first).is_file()


@needs_phantom
def test_frontal_view_selection_leaves_out_laterals(layout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from overread.training.run import select_views

    lines = layout.train_csv.read_text().splitlines()
    patient_study = lines[1].split(",")[0].rsplit("/", 1)[0]
    lateral = lines[1].replace("view1_frontal", "view2_lateral").replace(",Frontal,", ",Lateral,")
    (layout.root / f"{patient_study}/view2_lateral.jpg").write_bytes(
        (layout.root / lines[1].split(",")[0]).read_bytes()
    )
    csv = tmp_path / "with-lateral.csv"
    csv.write_text("\n".join([*lines, lateral]) + "\n")
    table = read_labels("chexpert", csv, root=layout.root)
    said: list[str] = []
    assert len(select_views(table, "all", said.append)) == len(lines)
    frontal = select_views(table, "frontal", said.append)
    assert len(frontal) == len(lines) - 1 and set(frontal.frame["view"]) == {"frontal"}
    assert said == ["1 lateral image(s) left out (views = frontal)"]


@pytest.mark.slow
@needs_phantom
def test_tiny_chexpert_run_writes_a_package_that_onboards(run_cli, layout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from overread.models import load_package

    out = tmp_path / "run"
    args = [
        "train", "--preset", "chexpert-densenet121", "-o", out,
        "--set", f"data.root={layout.root}",
        "--set", f"data.labels_csv={layout.train_csv}",
        "--set", f"data.valid_csv={layout.valid_csv}",
        "--set", "data.size=64", "--set", "data.num_workers=0",
        "--set", "optim.epochs=1", "--set", "optim.batch_size=8",
        "--set", "package.export_onnx=false", "--set", "progress=false",
    ]  # fmt: skip
    status, stdout, stderr = run_cli(*args)
    assert status == 0, stderr
    assert "training densenet121" in stdout
    assert "validation: mean AUC" in stdout and "5 focus labels" in stdout

    package = load_package(out / "package")  # verifies every checksum
    manifest = package.manifest
    assert manifest.architecture == "densenet121" and manifest.input.size == 64
    assert package.labels == list(CHEXPERT_LABELS)
    validation = manifest.metrics["evaluations"]["validation"]
    assert validation["n_images"] == layout.n_valid
    assert set(validation["focus_labels"]) == {
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion",
    }  # fmt: skip
    record = json.loads((out / "run.json").read_text())
    assert record["data_hashes"]["labels:train.csv"]
    assert record["data_hashes"]["valid-labels:valid.csv"]
    assert record["counts"]["val"] == layout.n_valid
    card = (out / "package" / "MODEL_CARD.md").read_text()
    assert "synthetic phantoms" not in card and "`chexpert` labels `train.csv`" in card

    # The trained weights onboard as a foreign state dict, as a user would bring them.
    onboarded = tmp_path / "onboarded"
    status, stdout, stderr = run_cli(
        "models", "package", "--state-dict", out / "package" / "model.pt",
        "--architecture", "densenet121", "--name", "chexpert-tiny", "--version", "0.1.0",
        "--labels", ",".join(CHEXPERT_LABELS), "--size", "64", "--channels", "1",
        "--no-int8", "--out", onboarded,
    )  # fmt: skip
    assert status == 0, stderr
    status, stdout, _ = run_cli("models", "verify", onboarded)
    assert status == 0 and "ok" in stdout


@needs_phantom
def test_phantom_chexpert_command(run_cli, layout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cohort = layout.root.parent / "phantom"
    status, out, err = run_cli(
        "phantom", "chexpert", "--from", cohort, "--out", tmp_path / "cx", "--format", "png",
        "--valid-fraction", "0.3",
    )  # fmt: skip
    assert status == 0, err
    assert f"wrote {layout.n_train} train and {layout.n_valid} valid images" in out
    table = read_labels("chexpert", tmp_path / "cx" / "CheXpert-v1.0-small" / "train.csv")
    assert str(table.frame["path"].iat[0]).endswith("view1_frontal.png")
    status, _, err = run_cli("phantom", "chexpert", "--from", tmp_path / "none", "--out", tmp_path)
    assert status != 0 and err.startswith("error: ") and "not a phantom cohort" in err
    assert len(err.strip().splitlines()) == 1
