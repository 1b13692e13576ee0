from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from overread.errors import ConfigError
from overread.training import load_config, parse_config, preset_names
from overread.training.config import TrainConfig


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


SMALL = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8}
THREE = ["Edema", "Fracture", "Pneumothorax"]


def _write_package(folder: Path, *, labels: list[str] = THREE, channels: int = 1) -> Path:
    """A signed, verified package of a small cxr-convnet (the project's writer)."""
    from overread.imaging.transforms import cxr_chain
    from overread.models import build_network, write_package

    torch.manual_seed(1)
    net = build_network("cxr-convnet", in_channels=channels, num_classes=len(labels), **SMALL)
    return write_package(
        folder,
        network=net,
        architecture="cxr-convnet",
        arch_kwargs=SMALL,
        labels=labels,
        input_spec={"size": 32, "channels": channels, "chain": cxr_chain(32).to_spec()},
        name="tiny",
        version="1.0.0",
        intended_use="tests",
        export_onnx=False,
    )


def _config(init: Path, **model: Any) -> TrainConfig:
    cfg = load_config(preset="cxr-phantom")
    cfg.model.kwargs = dict(SMALL)
    cfg.model.init = init
    for key, value in model.items():
        if key == "channels":
            cfg.data.channels = value
        else:
            setattr(cfg.model, key, value)
    return cfg


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_model_init_warm_starts_from_a_verified_package(tmp_path: Path) -> None:
    import shutil

    from overread.models import load_package
    from overread.training.run import build_model, warm_start
    from overread.training.warmstart import init_kind

    package = _write_package(tmp_path / "pkg")
    expected = torch.load(package / "model.pt", weights_only=True)
    # pool, pool_r and last_stride change no weight's shape: they may differ.
    cfg = _config(package, kwargs={**SMALL, "pool": "lse", "last_stride": 1})
    net = build_model(cfg, THREE)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())
    start = warm_start(cfg, THREE)
    assert start is not None
    assert start.record() == {
        "kind": "package",
        "path": str(package),
        "name": "tiny",
        "version": "1.0.0",
        "sha256": load_package(package).sha256,
    }
    # The same package as a .zip (one shared rule says what is a package).
    archive = Path(shutil.make_archive(str(tmp_path / "tiny"), "zip", tmp_path, "pkg"))
    assert init_kind(archive) == init_kind(package) == "package"
    assert init_kind(package / "model.pt") == "file"  # a torch file is a zip, not a package
    net = build_model(_config(archive), THREE)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())
    # A folder with neither a run's checkpoint nor a package's manifest is refused.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint found"):
        build_model(_config(tmp_path / "empty"), THREE)


def test_model_init_refuses_a_tampered_package(tmp_path: Path) -> None:
    from overread.errors import ModelPackageError
    from overread.training.run import build_model

    package = _write_package(tmp_path / "pkg")
    state = torch.load(package / "model.pt", weights_only=True)
    state["classifier.bias"] = state["classifier.bias"] + 1.0
    torch.save(state, package / "model.pt")
    with pytest.raises(ModelPackageError, match="package refused") as exc:
        build_model(_config(package), THREE)
    assert "model.pt" in _one_line(exc)


class _Planted:
    """Unpickling this touches a file: code run by ``torch.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


def test_model_init_never_runs_a_pickle_in_a_package(tmp_path: Path) -> None:
    from overread.models import resign_package
    from overread.training.run import build_model

    package = _write_package(tmp_path / "pkg")
    marker = tmp_path / "ran"
    torch.save({"classifier.bias": _Planted(marker)}, package / "model.pt")
    resign_package(package)  # even a correctly re-signed package must not run code
    with pytest.raises(ConfigError, match="cannot read these weights safely") as exc:
        build_model(_config(package), THREE)
    _one_line(exc)
    assert not marker.exists()


def test_model_init_checks_the_package_against_the_config(tmp_path: Path) -> None:
    from overread.training.run import build_model

    package = _write_package(tmp_path / "pkg")
    cases = [
        (_config(package, architecture="densenet-tiny", kwargs={}), THREE, "'cxr-convnet'"),
        (_config(package, channels=3), THREE, "1 input channel"),
        (_config(package, kwargs={**SMALL, "widths": [8, 32]}), THREE, "model.kwargs.widths"),
        (_config(package), [*THREE, "Cardiomegaly"], "classifier head would not match"),
        # The same labels in another order would map the head to the wrong findings.
        (_config(package), list(reversed(THREE)), "in another order"),
    ]
    for cfg, labels, message in cases:
        with pytest.raises(ConfigError, match=message) as exc:
            build_model(cfg, labels)
        _one_line(exc)


def test_weights_that_do_not_fit_are_one_config_error_line(tmp_path: Path) -> None:
    from overread.models import build_network
    from overread.training.run import build_model

    other = build_network("cxr-convnet", num_classes=3, widths=[8, 32], blocks=[1, 1])
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="do not fit the configured network") as exc:
        build_model(_config(tmp_path / "other.pt"), THREE)
    _one_line(exc)


def test_the_bundled_default_package_initialises_the_fine_preset() -> None:
    from overread.models import load_package
    from overread.training.run import build_model

    bundled = Path(__file__).resolve().parents[2] / "src/overread/models/bundled/cxr-default"
    package = load_package(bundled)
    cfg = load_config(preset="cxr-phantom-fine", overrides={"model.init": str(bundled)})
    net = build_model(cfg, package.labels)
    expected = torch.load(bundled / "model.pt", weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())


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
    assert "- Class map: the last stage does not downsample" in fine
    assert "16 x 16 at 256 px instead of 8 x 8" in fine
    # The grid follows the input size and the network's stride, not a fixed figure.
    at_224 = load_config(preset="cxr-phantom-fine", overrides={"data.size": 224})
    assert "14 x 14 at 224 px instead of 7 x 7" in model_card(at_224, ["Edema"], record)
    package = _write_package(tmp_path / "cxr-default-1.1.0")
    started = {"kind": "package", "name": "cxr-default", "version": "1.1.0", "sha256": "ab12"}
    from_package = model_card(
        load_config(preset="cxr-phantom-fine", overrides={"model.init": str(package)}),
        ["Edema"],
        {**record, "init": started},
    )
    assert (
        "initialised from the weights of model package `cxr-default 1.1.0` "
        "(verified; sha256 `ab12`)" in from_package
    )


@pytest.mark.parametrize("content", [b"not torch at all\n", bytes(range(256)) * 4])
def test_a_file_that_is_not_torch_is_one_line_error(tmp_path: Path, content: bytes) -> None:
    from overread.training.checkpoint import load_checkpoint, read_torch_file

    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    for read in (read_torch_file, load_checkpoint):
        with pytest.raises(ConfigError, match="not a readable torch file") as exc:
            read(path)
        assert "\n" not in str(exc.value)
