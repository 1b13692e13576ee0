"""Model packages: a directory (or .zip) with ``manifest.json`` and checksummed files.

A package is the unit that travels from training to evaluation to serving. Loading
one verifies everything it contains (manifest schema, manifest hash, optional HMAC,
the SHA-256 and size of every file, no unlisted files), so what was validated is
byte for byte what is served; any mismatch refuses the package with the reason.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import ValidationError
from torch import nn

from overread.errors import ModelPackageError
from overread.findings import FINDING_CODES
from overread.models.int8_tuning import DEFAULT_TARGET
from overread.models.manifest import (
    ENSEMBLE_ARCHITECTURE,
    MANIFEST_NAME,
    Accepts,
    Calibration,
    Code,
    EnsembleMember,
    EnsembleSection,
    FileEntry,
    InputSpec,
    Int8Section,
    LabelSpec,
    Manifest,
    OnboardedSection,
    RuntimeFiles,
    Task,
    UncertaintySettings,
    VolumeSpec,
)
from overread.models.networks import build_network

logger = logging.getLogger(__name__)

STATE_DICT_NAME = "model.pt"
ONNX_FP32_NAME = "model.onnx"
ONNX_INT8_NAME = "model.int8.onnx"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelPackage:
    """A verified model package on disk.

    Attributes
    ----------
    path
        The package directory (a .zip is unpacked to a private directory first).
    manifest
        The validated manifest.
    """

    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        """The model's name, e.g. ``cxr-default``."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """The model's version string."""
        return self.manifest.version

    @functools.cached_property
    def sha256(self) -> str:
        """The hash of the canonical manifest, which covers every file's hash (computed
        once: the manifest is immutable)."""
        return self.manifest.content_sha256()

    @property
    def labels(self) -> list[str]:
        """Output label names in output order."""
        return self.manifest.label_names

    def file(self, relative: str) -> Path:
        """Absolute path of a file listed in the manifest."""
        if relative not in self.manifest.files:
            raise ModelPackageError(f"{self.path}: {relative!r} is not part of the package")
        return self.path / relative

    def runtime_file(self, kind: str) -> Path | None:
        """The file for ``torch``, ``fp32`` or ``int8``, or None if the package lacks it."""
        runtime = self.manifest.runtime
        relative = {
            "torch": runtime.torch_state_dict,
            "fp32": runtime.onnx_fp32,
            "int8": runtime.onnx_int8,
        }[kind]
        return None if relative is None else self.file(relative)

    def build_network(self) -> nn.Module:
        """The torch network with the package's weights, in eval mode."""
        if self.manifest.is_ensemble:
            raise ModelPackageError(
                f"{self.name} {self.version} is an ensemble: its members have the networks"
            )
        state_path = self.runtime_file("torch")
        if state_path is None:
            raise ModelPackageError(f"{self.path}: package has no torch state dict")
        net = build_network(
            self.manifest.architecture,
            in_channels=self.manifest.input.channels,
            num_classes=len(self.labels),
            **dict(self.manifest.arch_kwargs),
        )
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelPackageError(
                f"{state_path}: weights do not fit the architecture: {exc}"
            ) from None
        return net.eval()

    def thresholds(
        self, operating_point: str | None = None, *, dtype: npt.DTypeLike = np.float32
    ) -> np.ndarray:
        """Per-label decision thresholds at an operating point (0.5 where none is set), as
        ``dtype`` (``np.float64``: exactly the manifest's numbers, for float64 scores)."""
        point = operating_point or self.manifest.default_operating_point
        values = []
        for label in self.labels:
            points = self.manifest.operating_points.get(label, {})
            if operating_point is not None and points and point not in points:
                raise ModelPackageError(
                    f"{self.name} {self.version}: label {label!r} has no operating point {point!r}"
                    f" (has: {', '.join(sorted(points))})"
                )
            values.append(points.get(point, 0.5))
        return np.asarray(values, dtype=dtype)


def _parse_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelPackageError(f"{path}: not a model package (no {MANIFEST_NAME})")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPackageError(f"{manifest_path}: not valid JSON: {exc}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ModelPackageError(
            f"{manifest_path}: invalid manifest: {where}: {first['msg']}"
        ) from None


def verify_package(path: Path | str, *, key: bytes | None = None) -> list[str]:
    """Check a package directory and return every problem found (empty when it verifies).

    The manifest must parse and validate, its signature must match its content (and
    the HMAC when ``key`` is given), and every file must match its recorded size and
    SHA-256 with no unlisted files present.
    """
    root = Path(path)
    try:
        manifest = _parse_manifest(root)
    except ModelPackageError as exc:
        return [str(exc)]
    problems: list[str] = []
    if manifest.signature is None:
        problems.append(f"{root}: manifest is not signed")
    elif manifest.signature.manifest_sha256 != manifest.content_sha256():
        problems.append(f"{root}: manifest hash mismatch (manifest changed after signing)")
    if key is not None and manifest.signature is not None:
        if manifest.signature.hmac_sha256 is None:
            problems.append(f"{root}: package carries no HMAC but a signing key is configured")
        elif manifest.signature.hmac_sha256 != manifest.hmac_sha256(key):
            problems.append(f"{root}: HMAC mismatch (wrong key or altered manifest)")
    for relative, entry in sorted(manifest.files.items()):
        file_path = root / relative
        if not file_path.is_file():
            problems.append(f"{file_path}: missing")
            continue
        size = file_path.stat().st_size
        if size != entry.size:
            problems.append(f"{file_path}: size {size} != recorded {entry.size}")
        elif file_sha256(file_path) != entry.sha256:
            problems.append(f"{file_path}: sha256 mismatch")
    listed = set(manifest.files) | {MANIFEST_NAME}
    for file_path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file_path.relative_to(root).as_posix()
        if relative not in listed and relative.split("/")[-1] != ".DS_Store":
            problems.append(f"{file_path}: not listed in the manifest")
    return problems


def _unpack_zip(path: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="overread-package-"))
    atexit.register(shutil.rmtree, target, True)  # the unpacked copy lives for this process
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                parts = Path(member).parts
                if member.startswith(("/", "\\")) or ".." in parts:
                    raise ModelPackageError(f"{path}: unsafe member name {member!r}")
            archive.extractall(target)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelPackageError(f"{path}: not a valid zip file: {exc}") from None
    # A zip may hold the package at its root or inside one top-level folder.
    if not (target / MANIFEST_NAME).is_file():
        children = [c for c in target.iterdir() if c.is_dir()]
        if len(children) == 1 and (children[0] / MANIFEST_NAME).is_file():
            return children[0]
    return target


def load_package(path: Path | str, *, key: bytes | None = None) -> ModelPackage:
    """Load and verify a package directory or .zip.

    Raises
    ------
    ModelPackageError
        If the path is not a package, the manifest is invalid, or verification fails;
        the message lists the mismatches.
    """
    root = Path(path)
    if root.is_file() and zipfile.is_zipfile(root):
        root = _unpack_zip(root)
    elif not root.is_dir():
        raise ModelPackageError(f"{path}: no such model package")
    problems = verify_package(root, key=key)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ModelPackageError(f"package refused: {problems[0]}{more}")
    return ModelPackage(path=root.resolve(), manifest=_parse_manifest(root))


def _label_specs(labels: Sequence[str | LabelSpec]) -> list[LabelSpec]:
    specs = []
    for label in labels:
        if isinstance(label, LabelSpec):
            specs.append(label)
            continue
        code = FINDING_CODES.get(label)
        # Only standard codes travel with a package; a local one means nothing elsewhere.
        codes = (
            [Code(scheme=code.scheme, value=code.value, meaning=code.meaning)]
            if code is not None and code.is_standard
            else []
        )
        specs.append(LabelSpec(name=label, codes=codes))
    return specs


def write_package(
    out_dir: Path | str,
    *,
    network: nn.Module,
    architecture: str,
    labels: Sequence[str | LabelSpec],
    input_spec: InputSpec | Mapping[str, Any],
    name: str,
    version: str,
    intended_use: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    operating_points: Mapping[str, Mapping[str, float]] | None = None,
    default_operating_point: str = "balanced",
    calibration: Calibration | Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    accepts: Accepts | Mapping[str, Any] | None = None,
    task: Task | str = Task.MULTI_LABEL_CLASSIFICATION,
    trained: bool = True,
    refer_uncertainty: float = 0.8,
    export_onnx: bool = True,
    int8_calibration: np.ndarray | None = None,
    int8_target: float | None = DEFAULT_TARGET,
    key: bytes | None = None,
    overwrite: bool = False,
    onboarded: OnboardedSection | None = None,
    uncertainty: UncertaintySettings | Mapping[str, Any] | None = None,
    volume: VolumeSpec | None = None,
) -> Path:
    """Write a verified model package from a torch network and its metadata.

    The state dict is always written; with ``export_onnx`` an FP32 ONNX model with a
    class-activation-map output is exported (and checked against torch), and with
    ``int8_calibration`` (float32 ``(N, C, H, W)`` preprocessed images) a static INT8
    model is added: quantised with :func:`~overread.models.int8_tuning.quantize_tuned`
    (nodes whose quantisation moves probabilities most stay FP32 until the drift on the
    calibration images is within ``int8_target``; ``None``: no search), recorded in the
    manifest's ``int8`` section. The package is assembled in a temporary directory and renamed into
    place, so a reader never sees a half-written package.

    Returns
    -------
    Path
        The package directory.
    """
    from overread.models.export import export_onnx as _export_onnx
    from overread.models.int8_tuning import export_guard, quantize_tuned

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ModelPackageError(f"{out}: already exists (pass overwrite=True to replace it)")
    spec = (
        input_spec
        if isinstance(input_spec, InputSpec)
        else InputSpec.model_validate(dict(input_spec))
    )
    label_specs = _label_specs(labels)
    names = [label.name for label in label_specs]
    points = {
        label: dict(operating_points.get(label, {}))
        if operating_points
        else {default_operating_point: 0.5}
        for label in names
    }
    staging = staging_dir(out)
    int8_section: Int8Section | None = None
    try:
        network = network.eval()
        torch.save(network.state_dict(), staging / STATE_DICT_NAME)
        runtime = {"torch_state_dict": STATE_DICT_NAME}
        cam = "none"
        if export_onnx:
            example = torch.zeros(1, spec.channels, spec.size, spec.size)
            report = _export_onnx(network, staging / ONNX_FP32_NAME, example)
            runtime["onnx_fp32"] = ONNX_FP32_NAME
            cam = "onnx-output" if report.has_cam else "none"
            logger.info("exported %s: max |onnx - torch| = %.2e", name, report.max_abs_diff)
            if int8_calibration is not None:
                _, int8_section = quantize_tuned(
                    staging / ONNX_FP32_NAME,
                    staging / ONNX_INT8_NAME,
                    int8_calibration,
                    target=int8_target,
                    guard=export_guard(spec.size, spec.chain, spec.channels),
                )
                runtime["onnx_int8"] = ONNX_INT8_NAME
        files = {
            p.relative_to(staging).as_posix(): FileEntry(
                sha256=file_sha256(p), size=p.stat().st_size
            )
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        manifest = Manifest(
            name=name,
            version=version,
            task=Task(task),
            trained=trained,
            architecture=architecture,
            arch_kwargs=dict(arch_kwargs or {}),
            accepts=accepts
            if isinstance(accepts, Accepts)
            else Accepts.model_validate(dict(accepts or {})),
            input=spec,
            labels=label_specs,
            operating_points=points,
            default_operating_point=default_operating_point,
            refer_uncertainty=refer_uncertainty,
            calibration=calibration
            if isinstance(calibration, Calibration)
            else Calibration.model_validate(dict(calibration or {})),
            cam=cam,
            intended_use=intended_use,
            training=dict(training or {}),
            metrics=dict(metrics or {}),
            runtime=RuntimeFiles(**runtime),
            files=files,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            onboarded=onboarded,
            uncertainty=None
            if uncertainty is None
            else UncertaintySettings.model_validate(
                uncertainty.model_dump()
                if isinstance(uncertainty, UncertaintySettings)
                else dict(uncertainty)
            ),
            volume=volume,
            int8=int8_section,
        ).signed(key)
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def resign_package(path: Path | str, *, key: bytes | None = None, **updates: Any) -> Manifest:
    """Recompute file hashes and the signature of a package directory in place.

    Used by ``overread export`` after adding runtime files; ``updates`` replace
    manifest fields (e.g. ``runtime``). The package is verified again afterwards.
    """
    root = Path(path)
    manifest = _parse_manifest(root)
    files = {
        p.relative_to(root).as_posix(): FileEntry(sha256=file_sha256(p), size=p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    data = manifest.model_dump(mode="python", exclude={"signature"})
    data.update(updates)
    data["files"] = files
    new = Manifest.model_validate(data).signed(key)
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(new.to_json(), encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)
    return new


def staging_dir(out: Path) -> Path:
    """A new, empty folder beside ``out`` to assemble a package in (renamed into place).

    Raises
    ------
    ModelPackageError
        If ``out``'s folder cannot be created or written.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    except (FileExistsError, NotADirectoryError):
        raise ModelPackageError(f"{out}: cannot write there (a file is in the way)") from None
    except OSError as exc:
        raise ModelPackageError(f"{out}: cannot write there ({exc.strerror or exc})") from None


def _stage_copy(source: Path, out: Path) -> Path:
    if out.exists():
        raise ModelPackageError(f"{out}: already exists; a package version is never overwritten")
    staging = staging_dir(out)
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelPackageError(f"{out}: cannot copy the package there ({exc})") from None
    return staging


def _retitle_card(card: Path, old: str, new: str) -> None:
    """Rename the version in a model card's title ("# Model card: NAME OLD") to ``new``,
    so a derived package's card names its own version; any other card is left alone."""
    if not card.is_file():
        return
    text = card.read_text(encoding="utf-8")
    first, sep, rest = text.partition("\n")
    if first.startswith("# ") and first.endswith(f" {old}"):
        card.write_text(first[: -len(old)] + new + sep + rest, encoding="utf-8")


def derive_package(
    source: ModelPackage,
    out_dir: Path | str,
    *,
    version: str,
    key: bytes | None = None,
    contents: Callable[[Path], None] | None = None,
    **updates: Any,
) -> ModelPackage:
    """Write a new version of a verified package with some manifest fields replaced.

    ``contents``, when given, is called with the staging directory to add files
    (an evaluation report) before they are hashed into the new manifest. A model
    card titled with the source's version is retitled with the new one.

    The source package is never touched: its files are copied to ``out_dir``, the
    manifest gets ``version``, ``updates`` (e.g. ``conformal=...``) and a new
    ``created`` time, the files are hashed and the manifest signed again, and the
    result is verified before it is renamed into place.

    Raises
    ------
    ModelPackageError
        If ``out_dir`` exists, ``version`` is the source's, or the result does not verify.
    """
    out = Path(out_dir)
    if version == source.version:
        raise ModelPackageError(
            f"{source.name} {source.version}: a derived package needs a new version number"
        )
    staging = _stage_copy(source.path, out)
    try:
        if contents is not None:
            contents(staging)
        _retitle_card(staging / "MODEL_CARD.md", source.version, version)
        manifest = _parse_manifest(staging)
        data = manifest.model_dump(mode="python", exclude={"signature"})
        data.update(updates)
        data["version"] = version
        data["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        data["files"] = {
            p.relative_to(staging).as_posix(): FileEntry(
                sha256=file_sha256(p), size=p.stat().st_size
            )
            for p in sorted(staging.rglob("*"))
            if p.is_file() and p.name != MANIFEST_NAME
        }
        try:
            new = Manifest.model_validate(data).signed(key)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "manifest"
            raise ModelPackageError(
                f"derived manifest is invalid: {where}: {first['msg']}"
            ) from None
        (staging / MANIFEST_NAME).write_text(new.to_json(), encoding="utf-8")
        problems = verify_package(staging, key=key)
        if problems:
            raise ModelPackageError(f"derived package does not verify: {problems[0]}")
        staging.chmod(0o755)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_package(out, key=key)


def write_ensemble_package(
    out_dir: Path | str,
    members: Sequence[ModelPackage],
    *,
    name: str,
    version: str,
    intended_use: str | None = None,
    operating_points: Mapping[str, Mapping[str, float]] | None = None,
    metrics: Mapping[str, Any] | None = None,
    key: bytes | None = None,
) -> ModelPackage:
    """Write an ensemble package: a manifest naming its member packages by hash.

    The members must share labels and preprocessing (one input feeds them all).
    Their calibrated probabilities are averaged; without ``operating_points`` each
    threshold is the mean of the members' (a starting point: choose them again on
    validation data for the ensemble). The ensemble has no weights of its own.
    """
    if len(members) < 2:
        raise ModelPackageError("an ensemble needs at least two member packages")
    first = members[0].manifest
    for member in members[1:]:
        m = member.manifest
        if m.label_names != first.label_names:
            raise ModelPackageError(
                f"{member.name} {member.version}: labels differ from {first.name} {first.version}'s"
            )
        if m.input != first.input:
            raise ModelPackageError(
                f"{member.name} {member.version}: preprocessing differs from "
                f"{first.name} {first.version}'s; ensemble members share one input"
            )
        if m.is_ensemble:
            raise ModelPackageError(
                f"{member.name} {member.version}: an ensemble cannot be a member"
            )
    if first.is_ensemble:
        raise ModelPackageError(f"{first.name} {first.version}: an ensemble cannot be a member")
    points: dict[str, dict[str, float]] = {}
    if operating_points is not None:
        points = {label: dict(values) for label, values in operating_points.items()}
    else:
        for label in first.label_names:
            shared = set.intersection(
                *(set(m.manifest.operating_points.get(label, {})) for m in members)
            )
            points[label] = {
                point: float(np.mean([m.manifest.operating_points[label][point] for m in members]))
                for point in sorted(shared)
            }
    out = Path(out_dir)
    if out.exists():
        raise ModelPackageError(f"{out}: already exists; a package version is never overwritten")
    try:
        manifest = Manifest(
            name=name,
            version=version,
            task=first.task,
            trained=all(m.manifest.trained for m in members),
            architecture=ENSEMBLE_ARCHITECTURE,
            accepts=first.accepts,
            input=first.input,
            labels=first.labels,
            operating_points=points,
            default_operating_point=first.default_operating_point,
            refer_uncertainty=first.refer_uncertainty,
            cam=first.cam if all(m.manifest.cam == first.cam for m in members) else "none",
            intended_use=intended_use or first.intended_use,
            metrics=dict(metrics or {}),
            training={"ensemble_of": [f"{m.name}@{m.version}" for m in members]},
            ensemble=EnsembleSection(
                members=[
                    EnsembleMember(name=m.name, version=m.version, sha256=m.sha256) for m in members
                ]
            ),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        ).signed(key)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "manifest"
        raise ModelPackageError(f"ensemble manifest is invalid: {where}: {error['msg']}") from None
    staging = staging_dir(out)
    try:
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        staging.chmod(0o755)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_package(out, key=key)


__all__ = [
    "ONNX_FP32_NAME",
    "ONNX_INT8_NAME",
    "STATE_DICT_NAME",
    "ModelPackage",
    "derive_package",
    "file_sha256",
    "load_package",
    "resign_package",
    "staging_dir",
    "verify_package",
    "write_ensemble_package",
    "write_package",
]
