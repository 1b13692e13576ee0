"""Onboarding foreign models: ONNX, TorchScript, MONAI bundles and DenseNet state dicts.

A hospital or vendor brings a model made elsewhere; ``overread models package``
turns it into an ordinary overread package, so routing, outputs, audit and
monitoring treat it like the bundled one. Every format ends as the same thing: an
FP32 ONNX graph with input ``image`` and output ``logits`` (plus ``cam`` where the
network allows exact class activation maps), an INT8 copy where quantisation works,
the standard chest X-ray preprocessing chain (with a final ``rescale`` when the model
expects another input range), and a manifest whose ``onboarded`` section records the
source file's hash, what its outputs are and what the phantom check measured.

Why probabilities become logits inside the graph: the pipeline calibrates logits
(``sigmoid(logit)`` when uncalibrated), so a model that ends in a sigmoid gets a
``log(p / (1 - p))`` tail and serves the same probabilities it produced.

Why the package is marked uncalibrated: a foreign model's outputs were never checked
on local images, so every threshold is 0.5 until ``overread models calibrate`` fits
calibration and operating points on a labelled local cohort.

A DenseNet state dict in torchvision's layout (TorchXRayVision publishes its
DenseNet-121 weights in it, 18 outputs in its ``default_pathologies`` order, input
in [-1024, 1024]) is renamed to the factory's MONAI DenseNet, so the package keeps
torch weights, exact CAMs and the factory's architecture name.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from overread.errors import ModelPackageError
from overread.models.calibration import calibration_images
from overread.models.export import (
    CAM_NAME,
    INPUT_NAME,
    LOGITS_NAME,
    cam_parts,
    export_onnx,
    quantize_int8,
)
from overread.models.manifest import (
    MANIFEST_NAME,
    Accepts,
    FileEntry,
    InputSpec,
    Manifest,
    OnboardedSection,
    OutputKind,
    RuntimeFiles,
    SourceFormat,
)
from overread.models.networks import ARCHITECTURES, build_network
from overread.models.package import (
    ONNX_FP32_NAME,
    ONNX_INT8_NAME,
    ModelPackage,
    _label_specs,
    file_sha256,
    load_package,
    staging_dir,
    write_package,
)

logger = logging.getLogger(__name__)

#: TorchXRayVision's ``datasets.default_pathologies``: the output order of its DenseNets.
XRV_PATHOLOGIES = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)
#: TorchXRayVision's input range (``datasets.normalize(img, maxval)``) and size.
XRV_INPUT_RANGE = (-1024.0, 1024.0)
XRV_SIZE = 224

#: Architecture recorded for packages that carry only ONNX graphs (no factory network).
EXTERNAL_ARCHITECTURE = "external"

#: Phantom images the check runs the model on.
VALIDATION_IMAGES = 8
#: Largest |packaged - source| output difference the check accepts.
AGREEMENT_TOLERANCE = 1e-3

_DEFAULT_USE = (
    "onboarded model: decision support for a reading radiologist; "
    "not validated on this site's images until calibrated"
)


@dataclass(frozen=True)
class OnboardSpec:
    """What the user said about a foreign model (options or a TOML file).

    ``None`` fields are taken from the source where it says (a bundle's metadata,
    an ONNX input shape, TorchXRayVision's layout) or refused when it does not.
    """

    name: str | None = None
    version: str | None = None
    labels: tuple[str, ...] | None = None
    size: int | None = None
    channels: int | None = None
    outputs: OutputKind | None = None
    input_range: tuple[float, float] | None = None
    intended_use: str | None = None
    operating_points: Mapping[str, Mapping[str, float]] | None = None
    default_operating_point: str = "balanced"
    accepts: Mapping[str, Any] = field(default_factory=dict)
    int8: bool = True


def spec_from_toml(path: Path) -> tuple[OnboardSpec, dict[str, str]]:
    """Read an onboarding TOML file: the spec and the source keys it names.

    Keys: ``onnx``, ``torchscript``, ``monai_bundle``, ``state_dict``, ``architecture``
    (relative paths are taken from the file's folder), ``name``, ``version``,
    ``labels`` (list or comma string), ``size``, ``channels``, ``outputs``,
    ``input_range`` ([low, high]), ``intended_use``, ``default_operating_point``,
    ``int8``, and the tables ``[operating_points.LABEL]`` and ``[accepts]``.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelPackageError(f"{path}: not a readable TOML file: {exc}") from None
    known = {
        "onnx",
        "torchscript",
        "monai_bundle",
        "state_dict",
        "architecture",
        "name",
        "version",
        "labels",
        "size",
        "channels",
        "outputs",
        "input_range",
        "intended_use",
        "operating_points",
        "default_operating_point",
        "accepts",
        "int8",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelPackageError(f"{path}: unknown key(s) {', '.join(unknown)}")
    sources: dict[str, str] = {}
    for key in ("onnx", "torchscript", "monai_bundle", "state_dict"):
        if key in data:
            sources[key] = str((path.parent / str(data[key])).resolve())
    if "architecture" in data:
        sources["architecture"] = str(data["architecture"])
    labels = data.get("labels")
    if isinstance(labels, str):
        labels = parse_labels(labels)
    rng = data.get("input_range")
    try:
        spec = OnboardSpec(
            name=data.get("name"),
            version=None if data.get("version") is None else str(data["version"]),
            labels=tuple(str(x) for x in labels) if labels is not None else None,
            size=None if data.get("size") is None else int(data["size"]),
            channels=None if data.get("channels") is None else int(data["channels"]),
            outputs=None if data.get("outputs") is None else OutputKind(data["outputs"]),
            input_range=None if rng is None else (float(rng[0]), float(rng[1])),
            intended_use=data.get("intended_use"),
            operating_points=data.get("operating_points"),
            default_operating_point=str(data.get("default_operating_point", "balanced")),
            accepts=dict(data.get("accepts", {})),
            int8=bool(data.get("int8", True)),
        )
    except (ValueError, TypeError, IndexError) as exc:
        raise ModelPackageError(f"{path}: {exc}") from None
    return spec, sources


def parse_labels(text: str) -> tuple[str, ...]:
    """``"A,B, C"`` -> ``("A", "B", "C")``."""
    labels = tuple(part.strip() for part in text.split(",") if part.strip())
    if not labels:
        raise ModelPackageError("--labels is empty")
    return labels


def parse_range(text: str) -> tuple[float, float]:
    """``"-1024,1024"`` -> ``(-1024.0, 1024.0)``."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ModelPackageError(f"--input-range {text!r}: give LOW,HIGH") from None
    if not high > low:
        raise ModelPackageError(f"--input-range {text!r}: HIGH must exceed LOW")
    return low, high


# ---------------------------------------------------------------------------------------
# Sources


@dataclass
class _Source:
    """A loaded foreign model and what it says about itself."""

    format: SourceFormat
    path: Path
    sha256: str
    run: Callable[[np.ndarray], np.ndarray]
    module: nn.Module | None = None
    onnx_path: Path | None = None
    architecture: str = EXTERNAL_ARCHITECTURE
    layout: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and out:
        first = next(iter(out.values()))
        if isinstance(first, torch.Tensor):
            return first
    raise ModelPackageError(f"the model returns {type(out).__name__}, not a tensor of scores")


def _torch_runner(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _first_tensor(module(torch.from_numpy(x))).float().numpy()

    return run


def _load_torchscript(path: Path) -> _Source:
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ModelPackageError(f"{path}: not a TorchScript file: {_one_line(exc)}") from None
    return _Source(
        SourceFormat.TORCHSCRIPT, path, file_sha256(path), _torch_runner(module), module=module
    )


def _load_onnx(path: Path) -> _Source:
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelPackageError(f"{path}: not an ONNX model: {_one_line(exc)}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelPackageError(f"{path}: has {len(inputs)} inputs; one image input is needed")
    shape = inputs[0].shape
    if len(shape) != 4:
        raise ModelPackageError(
            f"{path}: input {inputs[0].name} is {len(shape)}-D, not (N, C, H, W)"
        )
    defaults: dict[str, Any] = {}
    if isinstance(shape[1], int):
        defaults["channels"] = shape[1]
    if isinstance(shape[2], int) and shape[2] == shape[3]:
        defaults["size"] = shape[2]
    name = inputs[0].name
    output = session.get_outputs()[0].name
    del model

    def run(x: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(session.run([output], {name: x.astype(np.float32)})[0])
        except Exception as exc:
            raise ModelPackageError(
                f"{path}: ONNX Runtime cannot run it: {_one_line(exc)}"
            ) from None

    return _Source(
        SourceFormat.ONNX, path, file_sha256(path), run, onnx_path=path, defaults=defaults
    )


_TORCHVISION_LAYER = re.compile(
    r"^(features\.denseblock\d+\.denselayer\d+)\.(norm|relu|conv)\.?(\d)\.(.+)$"
)


def _is_torchvision_densenet(state: Mapping[str, Any]) -> bool:
    return "classifier.weight" in state and any(_TORCHVISION_LAYER.match(k) for k in state)


def _to_monai_densenet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision / TorchXRayVision DenseNet keys -> MONAI DenseNet keys.

    ``features.denseblockB.denselayerL.norm1.weight`` (or the old ``norm.1``) becomes
    ``features.denseblockB.denselayerL.layers.norm1.weight``; ``classifier.*`` becomes
    ``class_layers.out.*``; stem, transitions and ``norm5`` keep their names.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        layer = _TORCHVISION_LAYER.match(key)
        if layer:
            key = f"{layer.group(1)}.layers.{layer.group(2)}{layer.group(3)}.{layer.group(4)}"
        elif key.startswith("classifier."):
            key = "class_layers.out." + key.removeprefix("classifier.")
        out[key] = value
    return out


def _load_state_dict(path: Path, architecture: str | None) -> _Source:
    if architecture is None:
        raise ModelPackageError("--state-dict needs --architecture (e.g. densenet121)")
    if architecture not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelPackageError(f"unknown architecture {architecture!r}; known: {known}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelPackageError(
            f"{path}: not a state dict torch can read without running code "
            f"(a pickled model? save model.state_dict() instead): {_one_line(exc)}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelPackageError(f"{path}: not a state dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items() if k != "op_threshs"}
    layout = "overread"
    if architecture.startswith("densenet") and _is_torchvision_densenet(state):
        state = _to_monai_densenet(state)
        layout = "torchvision"
    try:
        num_classes = int(state["class_layers.out.weight"].shape[0])
        in_channels = int(state["features.conv0.weight"].shape[1])
    except KeyError:
        num_classes, in_channels = _head_shape(state)
    network = build_network(architecture, in_channels=in_channels, num_classes=num_classes)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelPackageError(
            f"{path}: weights do not fit {architecture}: {_one_line(exc)}"
        ) from None
    network.eval()
    defaults: dict[str, Any] = {"channels": in_channels, "num_classes": num_classes}
    if layout == "torchvision" and num_classes == len(XRV_PATHOLOGIES) and in_channels == 1:
        layout = "torchxrayvision"
        defaults |= {
            "labels": XRV_PATHOLOGIES,
            "size": XRV_SIZE,
            "input_range": XRV_INPUT_RANGE,
            "outputs": OutputKind.LOGITS,
        }
    return _Source(
        SourceFormat.STATE_DICT,
        path,
        file_sha256(path),
        _torch_runner(network),
        module=network,
        architecture=architecture,
        layout=layout,
        defaults=defaults,
    )


def _head_shape(state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(classes, input channels) from the last 2-D weight and the first 4-D one."""
    linear = [v for v in state.values() if v.ndim == 2]
    conv = [v for v in state.values() if v.ndim == 4]
    if not linear or not conv:
        raise ModelPackageError("cannot tell the number of outputs and input channels")
    return int(linear[-1].shape[0]), int(conv[0].shape[1])


def _bundle_file(root: Path, stem: str) -> Path | None:
    for suffix in (".json", ".yaml", ".yml"):
        candidate = root / "configs" / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _load_monai_bundle(root: Path) -> _Source:
    import json

    from monai.bundle import ConfigParser

    if not root.is_dir():
        raise ModelPackageError(f"{root}: not a MONAI bundle folder")
    meta_path = root / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise ModelPackageError(f"{root}: no configs/metadata.json; not a MONAI bundle")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelPackageError(f"{meta_path}: unreadable: {_one_line(exc)}") from None
    config = _bundle_file(root, "inference")
    weights = root / "models" / "model.pt"
    scripted = root / "models" / "model.ts"
    module: nn.Module
    if weights.is_file():
        if config is None:
            raise ModelPackageError(f"{root}: models/model.pt but no configs/inference.json")
        parser = ConfigParser()
        try:
            parser.read_meta(str(meta_path))
            parser.read_config(str(config))
            parser["bundle_root"] = str(root)
            module = parser.get_parsed_content("network_def", instantiate=True)
        except Exception as exc:
            raise ModelPackageError(
                f"{config}: cannot build network_def: {_one_line(exc)}"
            ) from None
        if not isinstance(module, nn.Module):
            raise ModelPackageError(f"{config}: network_def is not a torch module")
        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]
            module.load_state_dict(state)
        except Exception as exc:
            raise ModelPackageError(
                f"{weights}: weights do not fit network_def: {_one_line(exc)}"
            ) from None
        source_file = weights
    elif scripted.is_file():
        try:
            module = torch.jit.load(str(scripted), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise ModelPackageError(f"{scripted}: not TorchScript: {_one_line(exc)}") from None
        source_file = scripted
    else:
        raise ModelPackageError(f"{root}: no models/model.pt or models/model.ts")
    module.eval()
    defaults: dict[str, Any] = {}
    fmt = metadata.get("network_data_format", {})
    image: dict[str, Any] = next(iter(fmt.get("inputs", {}).values()), {})
    pred: dict[str, Any] = next(iter(fmt.get("outputs", {}).values()), {})
    if isinstance(image.get("num_channels"), int):
        defaults["channels"] = image["num_channels"]
    shape = image.get("spatial_shape")
    sides = shape if isinstance(shape, list) else []
    if len(sides) == 2 and sides[0] == sides[1] and isinstance(sides[0], int):
        defaults["size"] = sides[0]
    channel_def = pred.get("channel_def")
    if isinstance(channel_def, dict) and channel_def:
        try:
            order = sorted(channel_def, key=int)
            defaults["labels"] = tuple(str(channel_def[k]) for k in order)
        except ValueError:
            pass
    value_range = image.get("value_range")
    if isinstance(value_range, list) and len(value_range) == 2:
        defaults["input_range"] = (float(value_range[0]), float(value_range[1]))
    if metadata.get("name"):
        defaults["name"] = re.sub(r"[^A-Za-z0-9._-]+", "-", str(metadata["name"])).strip("-.")
    if metadata.get("version"):
        defaults["version"] = str(metadata["version"])
    use = metadata.get("intended_use") or metadata.get("description")
    if use:
        defaults["intended_use"] = str(use)
    return _Source(
        SourceFormat.MONAI_BUNDLE,
        root,
        file_sha256(source_file),
        _torch_runner(module),
        module=module,
        layout=type(module).__name__,
        defaults=defaults,
    )


def load_source(fmt: SourceFormat, path: Path, *, architecture: str | None = None) -> _Source:
    """Load a foreign model for packaging; a one-line :class:`ModelPackageError` when it
    cannot be read."""
    if fmt is not SourceFormat.MONAI_BUNDLE and not path.is_file():
        raise ModelPackageError(f"{path}: no such file")
    if fmt is SourceFormat.ONNX:
        return _load_onnx(path)
    if fmt is SourceFormat.TORCHSCRIPT:
        return _load_torchscript(path)
    if fmt is SourceFormat.MONAI_BUNDLE:
        return _load_monai_bundle(path)
    return _load_state_dict(path, architecture)


# ---------------------------------------------------------------------------------------
# Packaging


class _AsLogits(nn.Module):
    """The source network's first output, turned into logits when it is probabilities."""

    def __init__(self, network: nn.Module, probabilities: bool) -> None:
        super().__init__()
        self.network = network
        self.probabilities = probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _first_tensor(self.network(x)).float()
        if self.probabilities:
            p = out.clamp(1e-6, 1.0 - 1e-6)
            out = torch.log(p / (1.0 - p))
        return out


def _adopt_onnx(source: Path, target: Path, probabilities: bool) -> None:
    """Copy an ONNX graph with input ``image``, one output ``logits`` and batch axis ``batch``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    old_in, old_out = inputs[0].name, graph.output[0].name
    tail = "overread_scores" if probabilities else LOGITS_NAME
    renames = {old_in: INPUT_NAME, old_out: tail}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    inputs[0].name = INPUT_NAME
    kept = graph.output[0]
    kept.name = tail
    del graph.output[1:]
    for value in (inputs[0], kept):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    if probabilities:
        eps = np.array(1e-6, dtype=np.float32)
        for name, value in (("overread_eps", eps), ("overread_one", np.float32(1.0))):
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        graph.initializer.append(
            numpy_helper.from_array(np.asarray(1.0 - 1e-6, dtype=np.float32), "overread_top")
        )
        graph.node.extend(
            [
                helper.make_node("Max", [tail, "overread_eps"], ["overread_p_low"]),
                helper.make_node("Min", ["overread_p_low", "overread_top"], ["overread_p"]),
                helper.make_node("Sub", ["overread_one", "overread_p"], ["overread_q"]),
                helper.make_node("Div", ["overread_p", "overread_q"], ["overread_odds"]),
                helper.make_node("Log", ["overread_odds"], [LOGITS_NAME]),
            ]
        )
        logits = onnx.ValueInfoProto()
        logits.CopyFrom(kept)
        logits.name = LOGITS_NAME
        logits.type.tensor_type.elem_type = TensorProto.FLOAT
        del graph.output[:]
        graph.output.append(logits)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelPackageError(
            f"{source}: the adapted graph is invalid: {_one_line(exc)}"
        ) from None
    onnx.save(model, str(target))


def _export_scripted(module: torch.jit.ScriptModule, path: Path, example: torch.Tensor) -> None:
    import warnings

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
    except Exception as exc:
        raise ModelPackageError(
            f"cannot export the TorchScript model to ONNX: {_one_line(exc)}"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _chain(size: int, input_range: tuple[float, float]) -> list[dict[str, Any]]:
    from overread.imaging.transforms import Rescale, cxr_chain

    chain = cxr_chain(size).to_spec()
    steps: list[dict[str, Any]] = list(chain["transforms"]) if isinstance(chain, dict) else chain
    if input_range != (0.0, 1.0):
        steps.append(Rescale(*input_range).to_spec())
    return steps


def _validation_images(
    size: int, channels: int, chain: list[dict[str, Any]], input_range: tuple[float, float]
) -> tuple[np.ndarray, str]:
    images, note = calibration_images(VALIDATION_IMAGES, size, chain, channels, seed=0)
    if "synthetic" in note and input_range != (0.0, 1.0):
        low, high = input_range
        images = (images * (high - low) + low).astype(np.float32)
    return images, note


def _resolve(spec: OnboardSpec, source: _Source) -> OnboardSpec:
    d = source.defaults
    labels = spec.labels if spec.labels is not None else d.get("labels")
    if labels is None:
        raise ModelPackageError('give the output labels in order (--labels "A,B,...")')
    size = spec.size or d.get("size")
    if size is None:
        raise ModelPackageError("give the input size in pixels (--size)")
    channels = spec.channels or d.get("channels") or 1
    if "channels" in d and channels != d["channels"]:
        raise ModelPackageError(f"the model takes {d['channels']} channel(s), not {channels}")
    if "size" in d and spec.size and spec.size != d["size"] and source.format is SourceFormat.ONNX:
        raise ModelPackageError(f"the ONNX input is {d['size']} px, not {spec.size}")
    name = spec.name or d.get("name")
    version = spec.version or d.get("version")
    if not name or not version:
        raise ModelPackageError("give --name and --version")
    return replace(
        spec,
        name=name,
        version=version,
        labels=tuple(labels),
        size=int(size),
        channels=int(channels),
        input_range=spec.input_range or d.get("input_range") or (0.0, 1.0),
        intended_use=spec.intended_use or d.get("intended_use") or _DEFAULT_USE,
        outputs=spec.outputs or d.get("outputs"),
    )


def _check_outputs(raw: np.ndarray, n: int, labels: Sequence[str]) -> None:
    if raw.ndim != 2 or raw.shape != (n, len(labels)):
        raise ModelPackageError(
            f"the model gives outputs of shape {tuple(raw.shape)} on {n} phantom images; "
            f"expected ({n}, {len(labels)}) for {len(labels)} labels"
        )
    if not np.isfinite(raw).all():
        raise ModelPackageError("the model gives non-finite outputs on phantom images")


def _infer_outputs(raw: np.ndarray, given: OutputKind | None) -> tuple[OutputKind, bool]:
    in_unit = bool(raw.min() >= 0.0 and raw.max() <= 1.0)
    if given is OutputKind.PROBABILITIES and not in_unit:
        raise ModelPackageError(
            f"--outputs probabilities, but the model gives values in "
            f"[{raw.min():.3g}, {raw.max():.3g}] on phantom images"
        )
    if given is not None:
        return given, False
    return (OutputKind.PROBABILITIES if in_unit else OutputKind.LOGITS), True


def package_model(
    fmt: SourceFormat,
    path: Path | str,
    out_dir: Path | str,
    spec: OnboardSpec,
    *,
    architecture: str | None = None,
    key: bytes | None = None,
) -> ModelPackage:
    """Turn a foreign model into a verified overread package at ``out_dir``.

    Runs the model on phantom chest radiographs through the package's own chain,
    checks the output shape and range (taking values outside [0, 1] as logits when
    ``spec.outputs`` is not given), exports FP32 ONNX (and INT8 where quantisation
    works), checks the packaged graph against the source on the same images, and
    writes the manifest with an ``onboarded`` section. Without operating points every
    threshold is 0.5 and the package is marked uncalibrated.

    Raises
    ------
    ModelPackageError
        With a one-line reason, for anything it cannot read or run.
    """
    out = Path(out_dir)
    if out.exists():
        raise ModelPackageError(f"{out}: already exists; a package version is never overwritten")
    source = load_source(fmt, Path(path), architecture=architecture)
    spec = _resolve(spec, source)
    assert spec.labels is not None and spec.size is not None and spec.channels is not None
    assert spec.input_range is not None and spec.name and spec.version
    chain = _chain(spec.size, spec.input_range)
    images, note = _validation_images(spec.size, spec.channels, chain, spec.input_range)
    try:
        # One image at a time: a foreign graph may have a fixed batch size of 1.
        raw = np.concatenate([source.run(images[i : i + 1]) for i in range(len(images))])
    except ModelPackageError:
        raise
    except Exception as exc:
        raise ModelPackageError(
            f"the model cannot run on ({len(images)}, {spec.channels}, {spec.size}, "
            f"{spec.size}) images: {_one_line(exc)}"
        ) from None
    _check_outputs(raw, len(images), spec.labels)
    outputs, inferred = _infer_outputs(raw, spec.outputs)
    if fmt is SourceFormat.STATE_DICT and outputs is OutputKind.PROBABILITIES:
        raise ModelPackageError(
            f"a {source.architecture} state dict gives logits, not probabilities"
        )
    probabilities = outputs is OutputKind.PROBABILITIES
    expected = np.log(np.clip(raw, 1e-6, 1 - 1e-6) / (1 - np.clip(raw, 1e-6, 1 - 1e-6)))
    expected = expected if probabilities else raw
    points = (
        {label: dict(spec.operating_points.get(label, {})) for label in spec.labels}
        if spec.operating_points
        else None
    )
    if points is not None:
        unknown = set(spec.operating_points or {}) - set(spec.labels)
        if unknown:
            raise ModelPackageError(f"operating points for unknown labels: {sorted(unknown)}")
        if any(not p for p in points.values()):
            missing = [label for label, p in points.items() if not p]
            raise ModelPackageError(f"no operating point for {', '.join(missing[:3])}")
    onboarded = OnboardedSection(
        format=fmt,
        source=Path(path).name,
        source_sha256=source.sha256,
        outputs=outputs,
        outputs_inferred=inferred,
        calibrated=points is not None,
        layout=source.layout,
        validation={
            "images": len(images),
            "image_source": note,
            "output_shape": list(raw.shape),
            "output_min": float(raw.min()),
            "output_max": float(raw.max()),
        },
    )
    input_spec = InputSpec(
        size=spec.size,
        channels=spec.channels,
        chain=chain,
        normalisation=(
            "[0, 1] after MONOCHROME1 inversion (bone bright); zero padding"
            if spec.input_range == (0.0, 1.0)
            else f"[0, 1] after MONOCHROME1 inversion, then rescaled to "
            f"[{spec.input_range[0]:g}, {spec.input_range[1]:g}]"
        ),
    )
    int8_images = images if spec.int8 else None
    if fmt is SourceFormat.STATE_DICT:
        assert source.module is not None
        written = _write_state_dict_package(
            out, source, spec, input_spec, onboarded, points, int8_images, key
        )
    else:
        written = _write_external_package(
            out, source, spec, input_spec, onboarded, points, probabilities, int8_images, key
        )
    package = load_package(written, key=key)
    _check_package(package, images, expected)
    return package


def _write_state_dict_package(
    out: Path,
    source: _Source,
    spec: OnboardSpec,
    input_spec: InputSpec,
    onboarded: OnboardedSection,
    points: dict[str, dict[str, float]] | None,
    int8_images: np.ndarray | None,
    key: bytes | None,
) -> Path:
    assert source.module is not None and spec.labels is not None and spec.name and spec.version
    try:
        return write_package(
            out,
            network=source.module,
            architecture=source.architecture,
            labels=list(spec.labels),
            input_spec=input_spec,
            name=spec.name,
            version=spec.version,
            intended_use=spec.intended_use or _DEFAULT_USE,
            operating_points=points,
            default_operating_point=spec.default_operating_point,
            accepts=dict(spec.accepts),
            training={"data": f"onboarded from {source.path.name} ({source.layout} layout)"},
            int8_calibration=int8_images,
            key=key,
            onboarded=onboarded,
        )
    except ModelPackageError:
        raise
    except Exception as exc:
        raise ModelPackageError(f"cannot package {source.path.name}: {_one_line(exc)}") from None


def _write_external_package(
    out: Path,
    source: _Source,
    spec: OnboardSpec,
    input_spec: InputSpec,
    onboarded: OnboardedSection,
    points: dict[str, dict[str, float]] | None,
    probabilities: bool,
    int8_images: np.ndarray | None,
    key: bytes | None,
) -> Path:
    assert spec.labels is not None and spec.name and spec.version and spec.size
    staging = staging_dir(out)
    try:
        fp32 = staging / ONNX_FP32_NAME
        cam: Literal["onnx-output", "none"] = "none"
        if source.onnx_path is not None:
            _adopt_onnx(source.onnx_path, fp32, probabilities)
        elif isinstance(source.module, torch.jit.ScriptModule):
            # A scripted module cannot be called inside another module's trace: export
            # it as it is, then adapt the graph like any foreign ONNX file.
            example = torch.zeros(1, spec.channels or 1, spec.size, spec.size)
            raw_graph = staging / "source.onnx"
            _export_scripted(source.module, raw_graph, example)
            _adopt_onnx(raw_graph, fp32, probabilities)
            raw_graph.unlink()
        else:
            assert source.module is not None
            example = torch.zeros(1, spec.channels or 1, spec.size, spec.size)
            module = source.module
            direct = not probabilities and cam_parts(module) is not None
            network = module if direct else _AsLogits(module, probabilities)
            try:
                report = export_onnx(network, fp32, example, fold=direct)
            except ModelPackageError:
                raise
            except Exception as exc:
                raise ModelPackageError(
                    f"{source.path.name}: cannot export to ONNX: {_one_line(exc)}"
                ) from None
            cam = "onnx-output" if report.has_cam else "none"
        runtime: dict[str, str] = {"onnx_fp32": ONNX_FP32_NAME}
        int8_note = "not requested"
        if int8_images is not None:
            try:
                quantize_int8(fp32, staging / ONNX_INT8_NAME, int8_images)
                runtime["onnx_int8"] = ONNX_INT8_NAME
                int8_note = f"static INT8 calibrated on {len(int8_images)} phantom images"
            except Exception as exc:
                (staging / ONNX_INT8_NAME).unlink(missing_ok=True)
                int8_note = f"not possible: {_one_line(exc)}"
                logger.warning("%s: INT8 export %s", spec.name, int8_note)
        for leftover in staging.glob("*-opt.onnx"):
            leftover.unlink()
        files = {
            p.relative_to(staging).as_posix(): FileEntry(
                sha256=file_sha256(p), size=p.stat().st_size
            )
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        validation = dict(onboarded.validation) | {"int8": int8_note}
        manifest = Manifest(
            name=spec.name,
            version=spec.version,
            architecture=EXTERNAL_ARCHITECTURE,
            accepts=Accepts.model_validate(dict(spec.accepts)),
            input=input_spec,
            labels=_label_specs(list(spec.labels)),
            operating_points=points
            or {label: {spec.default_operating_point: 0.5} for label in spec.labels},
            default_operating_point=spec.default_operating_point,
            cam=cam,
            intended_use=spec.intended_use or _DEFAULT_USE,
            training={"data": f"onboarded from {source.path.name} ({source.format.value})"},
            runtime=RuntimeFiles(**runtime),
            files=files,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            onboarded=onboarded.model_copy(update={"validation": validation}),
        ).signed(key)
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        staging.chmod(0o755)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_package(package: ModelPackage, images: np.ndarray, expected: np.ndarray) -> None:
    """The packaged FP32 graph must reproduce the source's logits on the phantom images."""
    import onnxruntime as ort

    fp32 = package.runtime_file("fp32")
    assert fp32 is not None
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    try:
        got = np.asarray(session.run([LOGITS_NAME], {INPUT_NAME: images})[0])
    except Exception as exc:
        shutil.rmtree(package.path, ignore_errors=True)
        raise ModelPackageError(
            f"the packaged graph cannot run a batch of {len(images)} "
            f"(a fixed batch size inside the model?): {_one_line(exc)}"
        ) from None
    diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    if diff > AGREEMENT_TOLERANCE * max(1.0, float(np.abs(expected).max())):
        shutil.rmtree(package.path, ignore_errors=True)
        raise ModelPackageError(
            f"the packaged ONNX graph differs from the source by {diff:.3g} on phantom images"
        )
    logger.info(
        "%s %s: packaged graph matches the source (max diff %.2e; outputs %s)",
        package.name,
        package.version,
        diff,
        ", ".join(n for n in names if n in (LOGITS_NAME, CAM_NAME)),
    )


__all__ = [
    "EXTERNAL_ARCHITECTURE",
    "XRV_INPUT_RANGE",
    "XRV_PATHOLOGIES",
    "OnboardSpec",
    "load_source",
    "package_model",
    "parse_labels",
    "parse_range",
    "spec_from_toml",
]
