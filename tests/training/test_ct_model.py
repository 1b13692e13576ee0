"""CT lung/nodule model: config, losses, heatmap targets, a tiny training run, the package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from overread.cli import main
from overread.errors import ConfigError
from overread.training.ct import (
    CHANNELS,
    CtTrainConfig,
    build_ct_network,
    centre_focal_loss,
    ct_toml,
    heatmap_target,
    load_ct_network,
    load_ct_package,
    parse_ct_config,
    phantom_training_case,
    predict_ct,
    segmentation_loss,
    train_ct,
    write_ct_package,
)

TINY = {
    "data": {"train_n": 2, "test_n": 1, "size": 64},
    "model": {"channels": [4, 8, 16], "patch": [32, 32, 32], "target_spacing": 5.0},
    "optim": {"iterations": 3, "batch_size": 1},
    "log_every": 1,
}


def tiny_config(tmp_path: Path, **optim: object) -> CtTrainConfig:
    data = json.loads(json.dumps(TINY))
    data["optim"].update(optim)
    data["output"] = str(tmp_path / "run")
    data["kind"] = "ct-segmentation"
    return parse_ct_config(data)


def test_preset_is_a_ct_config_and_overrides_apply() -> None:
    data = ct_toml(None, "ct-phantom")
    assert data is not None
    cfg = parse_ct_config(data, {"optim.loss": "tversky", "model.architecture": "segresnet"})
    assert cfg.optim.loss == "tversky" and cfg.model.architecture == "segresnet"
    assert ct_toml(None, "cxr-phantom") is None  # the classifier preset is not CT


def test_bad_ct_config_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"optim\.loss"):
        parse_ct_config(dict(ct_toml(None, "ct-phantom") or {}), {"optim.loss": "l2"})
    rc = main(["train", "--preset", "ct-phantom", "--set", "optim.loss=l2", "--show-config"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "optim.loss" in err[0]


def test_show_config_prints_the_resolved_ct_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["train", "--preset", "ct-phantom", "--set", "optim.iterations=7", "--show-config"])
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "ct-segmentation" and shown["optim"]["iterations"] == 7


@pytest.mark.parametrize("loss", ["dice", "dicece", "focal", "tversky", "dicefocal"])
def test_every_loss_gives_a_finite_gradient(loss: str) -> None:
    fn = segmentation_loss(loss)
    logits = torch.zeros(2, 2, 8, 8, 8, requires_grad=True)
    target = torch.zeros(2, 2, 8, 8, 8)
    target[:, 0, 2:6, 2:6, 2:6] = 1
    value = fn(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None and logits.grad.abs().sum() > 0
    # A perfect prediction scores better than an uninformed one.
    perfect = (target * 20 - 10).requires_grad_(False)
    assert float(fn(perfect, target)) < float(value.detach())


def test_flips_move_the_image_and_every_target_channel_together() -> None:
    from overread.training.ct import _flip

    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 7, 8)).astype(np.float32)
    target = np.stack([image > 0, image > 1, image > -1]).astype(np.float32)
    candidates = {
        (f0, f2): np.flip(image, [a for a, f in ((0, f0), (2, f2)) if f]) if f0 or f2 else image
        for f0 in (False, True)
        for f2 in (False, True)
    }
    seen = set()
    for _ in range(40):
        img, tgt = _flip(image, target, [0, 2], rng)
        assert img.flags["C_CONTIGUOUS"] and tgt.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(tgt, np.stack([img > 0, img > 1, img > -1]))
        [flips] = [k for k, v in candidates.items() if np.array_equal(v, img)]
        seen.add(flips)
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def test_flip_axes_and_nodule_loss_are_validated() -> None:
    data = dict(ct_toml(None, "ct-phantom") or {})
    with pytest.raises(ConfigError, match=r"flip_axes"):
        parse_ct_config(json.loads(json.dumps(data)), {"optim.flip_axes": [3]})
    with pytest.raises(ConfigError, match=r"nodule_loss"):
        parse_ct_config(json.loads(json.dumps(data)), {"optim.nodule_loss": "l2"})


def test_heatmap_has_one_exact_peak_per_nodule_and_focal_loss_rewards_it() -> None:
    heat = heatmap_target((20, 20, 20), [(5.3, 6.0, 7.7), (14.0, 14.0, 14.0)], [2.0, 4.0])
    assert int((heat == 1.0).sum()) == 2
    assert heat[5, 6, 8] == 1.0 and heat[14, 14, 14] == 1.0
    assert heat[0, 19, 0] < 1e-3
    target = torch.from_numpy(heat)[None, None]
    good = torch.where(target >= 0.99, torch.tensor(6.0), torch.tensor(-6.0))
    bad = torch.zeros_like(target)
    assert float(centre_focal_loss(good, target)) < float(centre_focal_loss(bad, target))


def test_training_case_targets_line_up_with_the_image() -> None:
    case = phantom_training_case(2, 1, 64, 5.0)
    assert case.image.shape == case.target.shape[1:]
    lung = case.target[0] > 0
    assert np.median(case.image[lung]) < -0.6  # HU ~ -850 -> about -0.79
    for c in case.nodule_centres:
        assert case.target[2][c] == 1.0


@pytest.mark.parametrize("architecture", ["unet", "segresnet"])
def test_network_maps_a_patch_to_three_channels(architecture: str) -> None:
    cfg = parse_ct_config(
        {"kind": "ct-segmentation", "model": {"architecture": architecture, "channels": [4, 8, 16]}}
    )
    net = build_ct_network(cfg.model)
    out = net(torch.zeros(1, 1, 16, 16, 16))
    assert out.shape == (1, len(CHANNELS), 16, 16, 16)


def test_tiny_training_checkpoint_package_and_prediction(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, nodule_loss="tversky", flip_axes=[2])
    cfg.checkpoint_every = 2
    lines: list[str] = []
    net, result = train_ct(cfg, echo=lines.append)
    assert result.checkpoint.is_file() and any("iter 3/3" in line for line in lines)
    assert (result.output / "checkpoint-latest.pt").is_file()  # written at step 2 of 3
    loaded, loaded_cfg = load_ct_network(result.checkpoint)
    assert loaded_cfg == cfg
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    package = write_ct_package(net, cfg, tmp_path / "pkg", metrics={"lung_dice": 0.5})
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["task"] == "segmentation"
    assert [label["name"] for label in manifest["labels"]] == list(CHANNELS)
    assert manifest["training"]["ct"]["target_spacing_mm"] == [5.0, 5.0, 5.0]
    assert manifest["accepts"]["modalities"] == ["CT"]
    pkg_net, pkg_cfg = load_ct_package(package)
    hu = np.full((30, 40, 44), -1000.0, dtype=np.float32)
    a = predict_ct(net, hu, (2.5, 3.0, 3.0), cfg)
    b = predict_ct(pkg_net, hu, (2.5, 3.0, 3.0), pkg_cfg)
    assert a.lung.shape == hu.shape and a.nodule.shape == hu.shape
    assert np.array_equal(a.lung, b.lung)
    assert len(a.detections) <= cfg.inference.max_detections
