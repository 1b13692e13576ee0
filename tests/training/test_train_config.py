from __future__ import annotations

from pathlib import Path

import pytest
import torch

from overread.errors import ConfigError
from overread.training import load_config, parse_config, preset_names


def test_shipped_preset_loads_and_resolves_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert "cxr-phantom" in preset_names()
    cfg = load_config(preset="cxr-phantom")
    assert cfg.model.architecture == "cxr-convnet"
    assert cfg.data.size == 224 and cfg.data.channels == 1
    assert cfg.output == tmp_path / "runs" / "cxr-phantom"


def test_configs_folder_matches_shipped_preset() -> None:
    repo = Path(__file__).resolve().parents[2]
    shipped = repo / "src" / "overread" / "training" / "presets" / "cxr-phantom.toml"
    assert (repo / "configs" / "cxr-phantom.toml").read_text() == shipped.read_text()


def test_overrides_shrink_a_preset() -> None:
    cfg = load_config(preset="cxr-phantom", overrides={"optim.epochs": 2, "data.phantom.n": 40})
    assert cfg.optim.epochs == 2 and cfg.data.phantom is not None and cfg.data.phantom.n == 40


def test_file_paths_resolve_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "run.toml"
    path.parent.mkdir()
    path.write_text('output = "out"\n[data]\nlabels_csv = "labels.csv"\nformat = "folder"\n')
    cfg = load_config(path)
    assert cfg.output == tmp_path / "sub" / "out"
    assert cfg.data.labels_csv == tmp_path / "sub" / "labels.csv"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "data: Field required"),
        ({"data": {"labels_csv": "x.csv"}, "optim": {"lr": -1}}, "optim.lr"),
        (
            {"data": {"labels_csv": "x.csv"}, "optim": {"epochs": 2, "head_epochs": 2}},
            "head_epochs",
        ),
        (
            {"data": {"labels_csv": "x.csv"}, "model": {"architecture": "resnet9000"}},
            "unknown architecture",
        ),
        ({"data": {"labels_csv": "x.csv", "split": [0.5, 0.2, 0.2]}}, "sum to 1"),
        ({"data": {}}, "give either"),
        ({"data": {"labels_csv": "x.csv"}, "optim": {"warmup": 1}}, "optim.warmup: Extra inputs"),
        ({"data": {"labels_csv": "x.csv"}, "loss": {"kind": "hinge"}}, "loss.kind"),
        ({"data": {"labels_csv": "x.csv"}, "prune": {"amounts": [1.5]}}, "pruning amounts"),
    ],
)
def test_invalid_configs_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid training config") as info:
        parse_config(data, source="bad.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("bad.toml:")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="nope")
    with pytest.raises(ConfigError, match="exactly one"):
        load_config()


def test_the_256_preset_continues_a_cxr_phantom_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert "cxr-phantom-256" in preset_names()
    cfg = load_config(preset="cxr-phantom-256")
    base = load_config(preset="cxr-phantom")
    assert cfg.data.size == 256 and cfg.model.kwargs == base.model.kwargs
    assert cfg.model.init == tmp_path / "runs" / "cxr-phantom"
    # The same training cohort and split as the run it continues.
    assert cfg.data.phantom is not None and base.data.phantom is not None
    assert cfg.data.phantom.out == tmp_path / "runs" / "phantoms" / "cxr-phantom-n3500-s0"
    assert (cfg.data.phantom.n, cfg.data.phantom.seed) == (base.data.phantom.n, 0)
    assert (cfg.data.split, cfg.data.split_seed) == (base.data.split, base.data.split_seed)
    repo = Path(__file__).resolve().parents[2]
    shipped = repo / "src" / "overread" / "training" / "presets" / "cxr-phantom-256.toml"
    assert (repo / "configs" / "cxr-phantom-256.toml").read_text() == shipped.read_text()


def test_the_lse_preset_is_the_256_preset_with_a_log_sum_exp_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.models import build_network

    monkeypatch.chdir(tmp_path)
    assert "cxr-phantom-lse" in preset_names()
    cfg = load_config(preset="cxr-phantom-lse")
    continued = load_config(preset="cxr-phantom-256")
    assert cfg.model.kwargs == {**continued.model.kwargs, "pool": "lse", "pool_r": 5.0}
    assert cfg.model.init == continued.model.init
    assert (cfg.data, cfg.loss, cfg.augment) == (continued.data, continued.loss, continued.augment)
    assert cfg.package.name == "cxr-default" and cfg.package.version == "1.3.0"
    # The pool has no parameters: the 1.1.0 weights load into the new head unchanged.
    base = load_config(preset="cxr-phantom")
    old = build_network(base.model.architecture, num_classes=14, **base.model.kwargs)
    new = build_network(cfg.model.architecture, num_classes=14, **cfg.model.kwargs)
    new.load_state_dict(old.state_dict())
    repo = Path(__file__).resolve().parents[2]
    shipped = repo / "src" / "overread" / "training" / "presets" / "cxr-phantom-lse.toml"
    assert (repo / "configs" / "cxr-phantom-lse.toml").read_text() == shipped.read_text()


def test_the_fine_preset_is_the_lse_preset_with_a_16_by_16_class_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.models import build_network

    monkeypatch.chdir(tmp_path)
    assert "cxr-phantom-fine" in preset_names()
    cfg = load_config(preset="cxr-phantom-fine")
    lse = load_config(preset="cxr-phantom-lse")
    assert cfg.model.kwargs == {**lse.model.kwargs, "last_stride": 1}
    assert cfg.model.init == lse.model.init
    assert (cfg.data, cfg.loss, cfg.augment) == (lse.data, lse.loss, lse.augment)
    assert cfg.optim.epochs == 3 and cfg.optim.lr == lse.optim.lr
    assert cfg.package.name == "cxr-default" and cfg.package.version == "1.4.0"
    # Same parameter shapes: the 1.1.0 weights load unchanged; the map is 16 x 16 at 256 px.
    base = load_config(preset="cxr-phantom")
    old = build_network(base.model.architecture, num_classes=14, **base.model.kwargs)
    new = build_network(cfg.model.architecture, num_classes=14, **cfg.model.kwargs)
    new.load_state_dict(old.state_dict())
    with torch.no_grad():
        assert new.eval().features(torch.zeros(1, 1, 256, 256)).shape == (1, 192, 16, 16)
    repo = Path(__file__).resolve().parents[2]
    shipped = repo / "src" / "overread" / "training" / "presets" / "cxr-phantom-fine.toml"
    assert (repo / "configs" / "cxr-phantom-fine.toml").read_text() == shipped.read_text()


def test_model_init_reads_a_model_package_folder(tmp_path: Path) -> None:
    from overread.models import build_network
    from overread.training.run import _weights_at

    net = build_network("cxr-convnet", num_classes=3, widths=[8, 16], blocks=[1, 1])
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "manifest.json").write_text('{"name": "m", "version": "1.0.0"}')
    torch.save(net.state_dict(), package / "model.pt")
    weights = _weights_at(package)
    assert weights.keys() == net.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    # A folder with neither a run's checkpoint nor a package's manifest is refused.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint found"):
        _weights_at(tmp_path / "empty")


def test_the_model_card_says_where_the_weights_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.training.card import model_card

    monkeypatch.chdir(tmp_path)
    record = {"metrics": {}}

    def model_line(preset: str) -> str:
        card = model_card(load_config(preset=preset), ["Edema"], record)
        return next(line for line in card.splitlines() if line.startswith("- Architecture"))

    assert "trained from scratch" in model_line("cxr-phantom")
    continued = model_line("cxr-phantom-256")
    assert "trained from scratch" not in continued
    assert "initialised from the best checkpoint of run `cxr-phantom`" in continued
    lse = model_card(load_config(preset="cxr-phantom-lse"), ["Edema"], record)
    assert "- Pooling: log-sum-exp of the class map" in lse and "r = 5" in lse
    assert "Pooling" not in model_card(load_config(preset="cxr-phantom"), ["Edema"], record)
    assert "Class map" not in lse
    fine = model_card(load_config(preset="cxr-phantom-fine"), ["Edema"], record)
    assert "- Class map: the last stage does not downsample" in fine and "16 x 16" in fine
    package = tmp_path / "cxr-default-1.1.0"
    package.mkdir()
    (package / "manifest.json").write_text('{"name": "cxr-default", "version": "1.1.0"}')
    from_package = model_card(
        load_config(preset="cxr-phantom-fine", overrides={"model.init": str(package)}),
        ["Edema"],
        record,
    )
    assert "initialised from the weights of model package `cxr-default 1.1.0`" in from_package
