"""Per-node INT8 sensitivity: the sweep finds the node made to drift, the search fixes it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from overread.errors import ModelPackageError
from overread.models import build_network, export_onnx
from overread.models.calibration import synthetic_batch
from overread.models.int8_tuning import (
    Int8Options,
    candidate_nodes,
    choose_exclusions,
    fp32_group,
    int8_sensitivity,
    probability_drift,
    quantize_tuned,
    runtime_guard,
)

TINY = {"widths": [8, 16, 32], "blocks": [1, 1, 1], "stem_width": 8}
#: The block whose inner activation gets an outlier channel (``features.3``: stage 2).
BLOCK = "/features/features.3/conv1/conv1.0/Conv"
NEIGHBOUR = "/features/features.3/conv2/conv2.0/Conv"


def _outlier_network(scale: float) -> torch.nn.Module:
    """A tiny cxr-convnet computing the same function for any ``scale``.

    Channel 0 of stage 2's first conv (through its batch norm and ReLU) is multiplied by
    ``scale`` and the next conv's weights reading it are divided by ``scale``: FP32 is
    unchanged, but one shared uint8 scale for that activation now spans ``scale`` times
    the range of its other channels, which the quantiser rounds to a few levels.
    """
    torch.manual_seed(0)
    net = build_network("cxr-convnet", num_classes=4, **TINY).eval()
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.uniform_(0.0, 0.2, generator=generator)
    block = net.features[3]
    with torch.no_grad():
        norm = block.conv1[1]
        norm.weight[0] *= scale
        norm.bias[0] = abs(float(norm.bias[0])) * scale
        block.conv2[0].weight[:, 0] /= scale
        net.classifier.weight *= 10.0  # logits of a few units, as a trained model's
    return net


@pytest.fixture(scope="module")
def drifting(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("int8")
    images = synthetic_batch(12, 64, seed=1)
    net = _outlier_network(3000.0)
    export_onnx(net, folder / "fp32.onnx", torch.from_numpy(images[:1]))
    return folder / "fp32.onnx", images


def test_the_sweep_finds_the_node_made_to_drift(drifting: tuple[Path, np.ndarray]) -> None:
    fp32, images = drifting
    names = [name for name, _ in candidate_nodes(fp32)]
    assert BLOCK in names and NEIGHBOUR in names
    assert "/features/features.0/features.0.0/Conv" not in names  # input conv: FP32 already

    only = int8_sensitivity(fp32, images, mode="only")
    assert only.baseline_drift > 0.05
    assert only.ranked()[0] in (BLOCK, NEIGHBOUR)
    drifts = {row.node: row.drift for row in only.nodes}
    others = [d for name, d in drifts.items() if name not in (BLOCK, NEIGHBOUR)]
    assert drifts[only.ranked()[0]] > 5 * max(others)

    # Leaving the block's first conv in FP32 means its output too: the conv reading it
    # joins the group, else that conv's quantised input rounds the same tensor.
    assert fp32_group(fp32, BLOCK) == [BLOCK, NEIGHBOUR]
    exclude = int8_sensitivity(fp32, images, mode="exclude", nodes=[names[-1], BLOCK])
    assert exclude.ranked()[0] == BLOCK  # leaving it in FP32 removes most of the drift
    assert exclude.nodes[0].drift < 0.2 * exclude.baseline_drift
    assert exclude.nodes[1].drift == pytest.approx(exclude.baseline_drift, abs=0.02)


def test_choose_exclusions_keeps_the_culprit_in_fp32(
    drifting: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    fp32, images = drifting
    choice = choose_exclusions(fp32, images, target=0.03, max_nodes=2)
    assert choice.baseline_drift > 0.05
    assert choice.options.exclude[:2] == (BLOCK, NEIGHBOUR)
    assert choice.drift < 0.03 < choice.baseline_drift
    # The chosen settings reproduce the measured drift when applied.
    _, section = quantize_tuned(fp32, tmp_path / "int8.onnx", images, target=0.03, max_nodes=2)
    assert section.exclude == list(choice.options.exclude)
    assert section.max_prob_diff == pytest.approx(choice.drift, abs=1e-6)
    assert probability_drift(fp32, tmp_path / "int8.onnx", images) == pytest.approx(
        section.max_prob_diff, abs=1e-6
    )
    # ... and the excluded node runs in FP32: its weights stay float initialisers.
    model = onnx.load(str(tmp_path / "int8.onnx"))
    convs = {node.name: node for node in model.graph.node if node.op_type == "Conv"}
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    kept = convs[section.exclude[0]]
    assert producers.get(kept.input[1]) != "DequantizeLinear"
    quantised = convs["/features/features.2/conv1/conv1.0/Conv"]
    assert producers.get(quantised.input[1]) == "DequantizeLinear"


def test_the_guard_refuses_groups_that_hurt_other_images(
    drifting: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    fp32, images = drifting
    guard = runtime_guard(64)
    plain, _ = quantize_tuned(fp32, tmp_path / "plain.onnx", images, target=None)
    guarded = choose_exclusions(fp32, images, target=0.0, max_nodes=3, guard=guard)
    assert guarded.options.exclude[:2] == (BLOCK, NEIGHBOUR)  # it helps both image sets
    out, _ = quantize_tuned(fp32, tmp_path / "g.onnx", images, options=guarded.options, target=None)
    assert probability_drift(fp32, out, guard) <= probability_drift(fp32, plain, guard) + 1e-9


def test_a_group_that_raises_the_guard_drift_is_not_kept(
    drifting: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.models import int8_tuning

    fp32, images = drifting
    measured = int8_tuning._Quantiser.drift
    calls: list[int] = []

    def worse_on_the_guard(self, options, chosen, *, reference=True, **extra):  # type: ignore[no-untyped-def]
        if reference:
            return measured(self, options, chosen, **extra)
        calls.append(1)
        return float(len(calls))  # every trial looks worse on the guard than the last

    monkeypatch.setattr(int8_tuning._Quantiser, "drift", worse_on_the_guard)
    blocked = choose_exclusions(fp32, images, target=0.0, max_nodes=2, guard=runtime_guard(64))
    assert blocked.options.exclude == () and blocked.drift == blocked.baseline_drift
    assert len(calls) >= 2  # the baseline and at least one refused trial


def test_a_model_within_target_is_left_alone(tmp_path: Path) -> None:
    images = synthetic_batch(8, 64, seed=2)
    export_onnx(_outlier_network(1.0), tmp_path / "fp32.onnx", torch.from_numpy(images[:1]))
    choice = choose_exclusions(tmp_path / "fp32.onnx", images, target=0.2)
    assert choice.options.exclude == () and choice.sensitivity is None
    assert choice.drift == choice.baseline_drift <= 0.2


def test_unknown_nodes_are_refused(drifting: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    fp32, images = drifting
    with pytest.raises(ModelPackageError, match="not a quantisable node"):
        quantize_tuned(
            fp32, tmp_path / "int8.onnx", images, options=Int8Options(exclude=("/nope",))
        )
    with pytest.raises(ModelPackageError, match="not quantisable"):
        int8_sensitivity(fp32, images, nodes=["/nope"])


def test_the_pooling_tail_is_never_in_a_group_and_may_be_named(
    drifting: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """A group recorded by the search can be replayed as an exclusion list even when
    the class-map convolution's reader is the (always FP32) pooling tail."""
    from overread.models.export import pool_tail_nodes
    from overread.models.int8_tuning import candidate_nodes, fp32_group

    fp32, images = drifting
    tail = pool_tail_nodes(fp32)
    assert tail
    for name, _ in candidate_nodes(fp32):
        assert not set(fp32_group(fp32, name)) & set(tail)
    quantize_tuned(
        fp32,
        tmp_path / "int8.onnx",
        images,
        options=Int8Options(exclude=(tail[0],)),
        target=None,
    )


def _write(out: Path, net: torch.nn.Module, images: np.ndarray, **kwargs: object) -> Path:
    from overread.imaging.transforms import cxr_chain
    from overread.models import write_package

    return write_package(
        out,
        network=net,
        architecture="cxr-convnet",
        arch_kwargs=TINY,
        labels=["Cardiomegaly", "Pneumothorax", "Edema", "Fracture"],
        input_spec={"size": 64, "channels": 1, "chain": cxr_chain(64).to_spec()},
        name="tiny-int8",
        version="1.0.0",
        intended_use="tests only",
        int8_calibration=images,
        **kwargs,  # type: ignore[arg-type]
    )


def test_write_package_records_and_applies_the_search(tmp_path: Path) -> None:
    from overread.models import load_package

    images = synthetic_batch(12, 64, seed=1)
    net = _outlier_network(3000.0)
    package = load_package(_write(tmp_path / "searched", net, images))
    section = package.manifest.int8
    assert section is not None and section.target == 0.03
    assert section.exclude[:2] == [BLOCK, NEIGHBOUR]
    assert section.baseline_max_prob_diff is not None and section.baseline_max_prob_diff > 0.05
    int8 = package.runtime_file("int8")
    fp32 = package.runtime_file("fp32")
    assert int8 is not None and fp32 is not None
    assert section.max_prob_diff is not None and section.max_prob_diff < 0.03
    assert probability_drift(fp32, int8, images) == pytest.approx(section.max_prob_diff, abs=1e-6)

    plain = load_package(_write(tmp_path / "plain", net, images, int8_target=None))
    assert plain.manifest.int8 is not None and plain.manifest.int8.exclude == []
    assert plain.manifest.int8.target is None
    assert plain.manifest.int8.max_prob_diff == pytest.approx(
        section.baseline_max_prob_diff, abs=1e-6
    )


def test_packages_without_the_section_keep_their_identity() -> None:
    import json

    from overread.models import load_package
    from overread.models.registry import bundled_dir

    package = load_package(bundled_dir() / "cxr-lung-seg")  # written without an int8 section
    assert package.manifest.int8 is None
    stored = json.loads((package.path / "manifest.json").read_text(encoding="utf-8"))
    assert "int8" not in stored
    assert package.manifest.content_sha256() == stored["signature"]["manifest_sha256"]


def test_export_cli_keeps_named_nodes_in_fp32(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from overread.models import load_package

    images = synthetic_batch(12, 64, seed=1)
    source = _write(tmp_path / "source", _outlier_network(1.0), images, int8_target=None)
    out = tmp_path / "exported"
    status, stdout, stderr = run_cli(
        "export", source, "--onnx", "--int8", "--out", out, "--calibration-images", "8",
        "--keep-fp32", NEIGHBOUR, "--no-int8-search", "--json",
    )  # fmt: skip
    assert status == 0, stderr
    import json

    report = json.loads(stdout)
    assert report["int8_fp32_nodes"] == [NEIGHBOUR]
    section = load_package(out).manifest.int8
    assert section is not None and section.exclude == [NEIGHBOUR] and section.target is None
    model = onnx.load(str(out / "model.int8.onnx"))
    producers = {o: node.op_type for node in model.graph.node for o in node.output}
    kept = next(node for node in model.graph.node if node.name == NEIGHBOUR)
    assert producers.get(kept.input[1]) != "DequantizeLinear"
    status, _, stderr = run_cli(
        "export", source, "--onnx", "--int8", "--out", tmp_path / "bad", "--keep-fp32", "/nope"
    )
    assert status == 2 and stderr.startswith("error: ") and "/nope" in stderr
    assert "Traceback" not in stderr
    status, _, stderr = run_cli("export", source, "--onnx", "--int8-sensitivity", "sideways")
    assert status == 2 and "sideways" in stderr


def test_the_runtime_check_s_drift_is_recorded_and_warned_about(
    drifting: tuple[Path, np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from overread.models.int8_tuning import INT8_TOLERANCE

    fp32, images = drifting
    with caplog.at_level(logging.WARNING, logger="overread.models.int8_tuning"):
        out, plain = quantize_tuned(fp32, tmp_path / "plain.onnx", images, target=None)
    seen = probability_drift(fp32, out, runtime_guard(64)[:2])
    assert plain.runtime_check_max_prob_diff == pytest.approx(seen, abs=1e-6)
    warned = [r for r in caplog.records if "runtime check" in r.getMessage()]
    assert bool(warned) == (seen > INT8_TOLERANCE)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="overread.models.int8_tuning"):
        out, tuned = quantize_tuned(fp32, tmp_path / "t.onnx", images, target=0.03, max_nodes=2)
    assert tuned.runtime_check_max_prob_diff is not None
    assert tuned.runtime_check_max_prob_diff < plain.runtime_check_max_prob_diff
