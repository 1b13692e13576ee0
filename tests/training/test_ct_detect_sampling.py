"""The detector's training options: hard-negative patches on vessels, warm start, warm-up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from overread.errors import ConfigError
from overread.training.ct import normalise_hu
from overread.training.ct_detect import (
    CtDetectConfig,
    DetectionCase,
    _crop,
    detection_targets,
    detection_toml,
    hard_negative_centres,
    parse_detection_config,
    train_detector,
)


def test_hard_negatives_are_bright_lung_voxels_away_from_the_nodules() -> None:
    shape = (12, 20, 20)
    hu = np.full(shape, -850.0, dtype=np.float32)  # lung parenchyma
    hu[:, 10, :] = 40.0  # a vessel along x
    hu[:, :, 3] = 40.0  # outside the lung below: chest wall
    lung = np.zeros(shape, dtype=bool)
    lung[:, :, 5:] = True
    heat, _ = detection_targets(shape, [(6.0, 10.0, 15.0)], [4.0], [0.2])  # a nodule on it
    found = hard_negative_centres(normalise_hu(hu), lung, heat, limit=10_000)
    assert found, "the vessel is a hard negative"
    for z, y, x in found:
        assert y == 10 and x >= 5  # on the vessel, in the lung
        assert heat[z, y, x] < 0.01  # never at the nodule
    assert all(abs(x - 15) > 2 or abs(z - 6) > 2 for z, _, x in found)
    few = hard_negative_centres(normalise_hu(hu), lung, heat, limit=5, seed=3)
    assert len(few) == 5 and set(few) <= set(found)
    assert few == hard_negative_centres(normalise_hu(hu), lung, heat, limit=5, seed=3)


def test_a_patch_around_given_anchors_contains_one() -> None:
    shape = (30, 40, 40)
    case = DetectionCase(
        np.zeros(shape, np.float32),
        np.zeros(shape, np.float32),
        np.zeros((3, *shape), np.float32),
        [(2, 2, 2)],
        [(20, 30, 30)],
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        case.image[...] = 0
        case.image[20, 30, 30] = 1
        img, _ = _crop(case, (12, 12, 12), rng, True, case.negatives)
        assert img.max() == 1.0  # the anchor is in the patch
        case.image[...] = 0
        case.image[2, 2, 2] = 1
        img, _ = _crop(case, (12, 12, 12), rng, True)
        assert img.max() == 1.0  # default anchors: the nodules


def test_the_new_options_default_to_the_old_behaviour_and_are_checked() -> None:
    cfg = parse_detection_config(detection_toml(None, "ct-nodule-detection") or {})
    assert cfg.optim.hard_negative_fraction == 0.0 and cfg.optim.warmup == 0.1
    assert cfg.optim.init is None
    with pytest.raises(ConfigError, match="at most 1"):
        parse_detection_config(
            {"kind": "ct-detection"},
            {"optim.nodule_fraction": 0.8, "optim.hard_negative_fraction": 0.3},
        )


def _cases() -> list[DetectionCase]:
    rng = np.random.default_rng(1)
    out = []
    for k in range(2):
        shape = (16, 16, 16)
        heat, size = detection_targets(shape, [(8.0, 8.0, 8.0 + k)], [4.0], [0.2])
        image = rng.uniform(-1, 1, shape).astype(np.float32)
        out.append(DetectionCase(image, heat, size, [(8, 8, 8 + k)], [(3, 3, 3), (12, 4, 5)]))
    return out


def _cfg(root: Path, **optim: object) -> CtDetectConfig:
    return parse_detection_config(
        {
            "kind": "ct-detection",
            "output": str(root),
            "model": {"channels": [4, 8, 16], "patch": [16, 16, 16], "target_spacing": 6.0},
            "optim": {"iterations": 2, "batch_size": 2, **optim},
        }
    )


def _weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.state_dict().values()]


def test_without_hard_negatives_the_known_negatives_change_nothing(tmp_path: Path) -> None:
    with_negs = _cases()
    without = [DetectionCase(c.image, c.heat, c.size, c.centres) for c in with_negs]
    a, _ = train_detector(_cfg(tmp_path / "a"), echo=lambda _: None, cases=with_negs)
    b, _ = train_detector(_cfg(tmp_path / "b"), echo=lambda _: None, cases=without)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b), strict=True))
    c, _ = train_detector(
        _cfg(tmp_path / "c", hard_negative_fraction=0.4),
        echo=lambda _: None,
        cases=with_negs,
    )
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(c), strict=True))


def test_a_warm_start_begins_from_the_given_weights(tmp_path: Path) -> None:
    first, result = train_detector(_cfg(tmp_path / "a"), echo=lambda _: None, cases=_cases())
    lines: list[str] = []
    # A vanishing learning rate: the weights stay those of the checkpoint.
    again, _ = train_detector(
        _cfg(tmp_path / "b", init=str(result.checkpoint), lr=1e-12),
        echo=lines.append,
        cases=_cases(),
    )
    assert any("starting from" in line for line in lines)
    # (Parameters only: batch norm's running statistics move in any training step.)
    for x, y in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.allclose(x, y, atol=1e-6)
    fresh, _ = train_detector(_cfg(tmp_path / "f", lr=1e-12), echo=lambda _: None, cases=_cases())
    assert not all(
        torch.allclose(x, y, atol=1e-6)
        for x, y in zip(first.parameters(), fresh.parameters(), strict=True)
    )
    # A folder holding checkpoint.pt works as well.
    train_detector(
        _cfg(tmp_path / "c", init=str(tmp_path / "a"), lr=1e-12),
        echo=lambda _: None,
        cases=_cases(),
    )


def test_a_bad_warm_start_is_a_one_line_error(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"no checkpoint\.pt"):
        train_detector(
            _cfg(tmp_path / "a", init=str(tmp_path / "none")), echo=lambda _: None, cases=_cases()
        )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a detector checkpoint"):
        train_detector(_cfg(tmp_path / "b", init=str(junk)), echo=lambda _: None, cases=_cases())
    other = _cfg(tmp_path / "c")
    _, result = train_detector(other, echo=lambda _: None, cases=_cases())
    wider = parse_detection_config(
        {
            "kind": "ct-detection",
            "output": str(tmp_path / "d"),
            "model": {"channels": [8, 16, 32], "patch": [16, 16, 16], "target_spacing": 6.0},
            "optim": {"iterations": 1, "batch_size": 2, "init": str(result.checkpoint)},
        }
    )
    with pytest.raises(ConfigError, match="do not fit"):
        train_detector(wider, echo=lambda _: None, cases=_cases())
    status, out, err = run_cli(
        "train",
        "--preset",
        "ct-nodule-detection",
        "--set",
        f"optim.init={tmp_path / 'none'}",
        "--set",
        "data.train_n=1",
        "-o",
        str(tmp_path / "cli"),
    )
    assert status != 0
    assert "error:" in (out + err) and "Traceback" not in (out + err)


def test_a_warm_start_from_another_grid_or_box_scale_is_refused(tmp_path: Path) -> None:
    from overread.training.ct_detect import DetModel, _initial_weights

    package = Path(__file__).parent / "assets" / "ct-nodule-detection"
    assert _initial_weights(package, DetModel())  # the committed package: 3 mm, 40 mm
    with pytest.raises(ConfigError, match=r"model\.target_spacing = 3, this run has 2"):
        _initial_weights(package, DetModel(target_spacing=2.0))
    with pytest.raises(ConfigError, match=r"model\.max_size_mm = 40, this run has 30"):
        _initial_weights(package, DetModel(max_size_mm=30.0))
    # A segmentation package (not a centre-heatmap detector) is refused by name.
    seg = tmp_path / "seg"
    seg.mkdir()
    shutil.copy(package / "model.pt", seg / "model.pt")
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["volume"]["postprocess"] = "lung-nodule"
    (seg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="not a detection package"):
        _initial_weights(seg, DetModel())
