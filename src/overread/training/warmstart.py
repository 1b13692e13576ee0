"""Where a run's starting weights come from (``model.init``), checked before use.

``model.init`` names a checkpoint file, a run folder (its best checkpoint) or a model
package (a folder with ``manifest.json`` and no ``checkpoints/``, or a package .zip).
A package is verified first (:func:`~overread.models.package.load_package`: signature,
every file's SHA-256) and its manifest compared with the run's configuration
(architecture, input channels, labels in order, weight-shaping network options); only
then are its torch weights read, with ``weights_only=True`` like every checkpoint. Any
mismatch is one line, :class:`~overread.errors.ConfigError` or
:class:`~overread.errors.ModelPackageError`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from overread.errors import ConfigError
from overread.models.manifest import MANIFEST_NAME
from overread.training.checkpoint import read_torch_file

#: Network options that leave every weight's shape unchanged: a package may differ in
#: these from the run that starts from it.
SHAPE_FREE_KWARGS = frozenset({"pool", "pool_r", "last_stride", "dropout_prob"})


def init_kind(path: Path) -> str:
    """``"package"``, ``"run"`` (a run folder: its best checkpoint) or ``"file"``.

    The one rule for what ``model.init`` names, shared by training and the model card
    (a path that does not exist is judged by its name; training then refuses it).
    """
    if path.is_dir():
        has_manifest = (path / MANIFEST_NAME).is_file()
        return "package" if has_manifest and not (path / "checkpoints").is_dir() else "run"
    if path.is_file() and zipfile.is_zipfile(path):
        # A torch file is a zip too: a package .zip holds a manifest (at its root or
        # inside one top-level folder).
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(Path(name).name == MANIFEST_NAME and len(Path(name).parts) <= 2 for name in names):
            return "package"
    if path.exists():
        return "file"
    # Not there (yet): by its name, a run folder unless it has a suffix.
    return "package" if path.suffix == ".zip" else "file" if path.suffix else "run"


@dataclass(frozen=True)
class WarmStart:
    """Verified starting weights and where they came from (recorded in run.json)."""

    state: dict[str, torch.Tensor]
    kind: str
    path: Path
    name: str | None = None
    version: str | None = None
    sha256: str | None = None

    def record(self) -> dict[str, Any]:
        """The provenance block of run.json (``init``)."""
        out: dict[str, Any] = {"kind": self.kind, "path": str(self.path)}
        if self.kind == "package":
            out |= {"name": self.name, "version": self.version, "sha256": self.sha256}
        return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _same(a: Any, b: Any) -> bool:
    return bool(_plain(a) == _plain(b))


def _from_package(
    path: Path, architecture: str, channels: int, kwargs: dict[str, Any], labels: Sequence[str]
) -> WarmStart:
    from overread.models.package import load_package

    package = load_package(path)  # ModelPackageError: signature, hashes, schema
    manifest = package.manifest
    where = f"model.init {path} ({package.name} {package.version})"
    if manifest.is_ensemble:
        raise ConfigError(f"{where}: an ensemble package cannot initialise one network")
    if manifest.architecture != architecture:
        raise ConfigError(
            f"{where}: the package is a {manifest.architecture!r} network, "
            f"the config builds {architecture!r}"
        )
    if manifest.input.channels != channels:
        raise ConfigError(
            f"{where}: the package takes {manifest.input.channels} input channel(s), "
            f"the config {channels} (data.channels)"
        )
    if list(package.labels) != list(labels):
        if sorted(package.labels) == sorted(labels):
            raise ConfigError(
                f"{where}: the training labels are the package's in another order; "
                "reorder the label columns to the package's order"
            )
        raise ConfigError(
            f"{where}: the package's {len(package.labels)} labels are not the training "
            f"data's {len(labels)}; the classifier head would not match"
        )
    package_kwargs = dict(manifest.arch_kwargs)
    for key in sorted(set(package_kwargs) & set(kwargs) - SHAPE_FREE_KWARGS):
        if not _same(package_kwargs[key], kwargs[key]):
            raise ConfigError(
                f"{where}: model.kwargs.{key} = {kwargs[key]!r} but the package has "
                f"{package_kwargs[key]!r} (only {', '.join(sorted(SHAPE_FREE_KWARGS))} may differ)"
            )
    weights = package.runtime_file("torch")
    if weights is None:
        raise ConfigError(f"{where}: the package has no torch weights")
    state = _read_state(weights)
    return WarmStart(
        state, "package", path, name=package.name, version=package.version, sha256=package.sha256
    )


def _read_state(file: Path, labels: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    payload = read_torch_file(file)  # refuses a pickled object before running it
    if isinstance(payload, dict) and "model" in payload:
        saved = payload.get("labels")
        if labels is not None and isinstance(saved, list) and saved != list(labels):
            raise ConfigError(
                f"{file}: trained on labels {saved}, this run has {list(labels)} "
                "(same labels in the same order required)"
            )
        payload = payload["model"]
    if not isinstance(payload, dict):
        raise ConfigError(f"{file}: not a state dict or training checkpoint")
    return payload


def weights_at(
    path: Path,
    *,
    architecture: str,
    channels: int,
    kwargs: dict[str, Any],
    labels: Sequence[str] | None = None,
) -> WarmStart:
    """The weights ``model.init`` names, verified and checked against the run's network."""
    kind = init_kind(path)
    if kind == "package":
        if labels is None:
            raise ConfigError(f"{path}: a model package needs the run's labels to be checked")
        return _from_package(path, architecture, channels, kwargs, labels)
    file = path / "checkpoints" / "best.pt" if kind == "run" else path
    if not file.is_file():
        raise ConfigError(f"{path}: no checkpoint found to initialise from")
    return WarmStart(_read_state(file, labels), kind, path)


def load_weights(net: torch.nn.Module, start: WarmStart) -> None:
    """Load ``start`` into ``net``; a shape or key mismatch is one ConfigError line."""
    try:
        net.load_state_dict(start.state)
    except RuntimeError as exc:
        raise ConfigError(
            f"model.init {start.path}: these weights do not fit the configured network: "
            f"{_one_line(exc)[:300]}"
        ) from None


__all__ = ["SHAPE_FREE_KWARGS", "WarmStart", "init_kind", "load_weights", "weights_at"]
