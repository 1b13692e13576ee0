"""The model registry: versioned packages on disk plus the bundled ones, and aliases.

Layout::

    <registry>/<name>/<version>/manifest.json ...   imported packages
    <registry>/aliases.json                          {"aliases": {alias: "name@version"},
                                                      "history": {alias: [older refs]}}

A reference is resolved in this order: an existing path (package directory or .zip);
an alias; ``name@version``; a bare ``name`` (its highest version, imported packages
winning over bundled ones at equal versions). The alias file is replaced atomically
(write, fsync, rename) and re-read whenever its modification time or size changes,
so a running service switches, shadows or rolls back a model without a restart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from overread.errors import ModelPackageError
from overread.models.manifest import MANIFEST_NAME, Manifest
from overread.models.package import ModelPackage, _parse_manifest, load_package, staging_dir

if TYPE_CHECKING:
    from overread.config import Settings

logger = logging.getLogger(__name__)

ALIASES_NAME = "aliases.json"
SIGNING_KEY_ENV = "OVERREAD_MODEL_SIGNING_KEY"


def bundled_dir() -> Path:
    """Directory of the packages shipped inside overread."""
    return Path(__file__).resolve().parent / "bundled"


def signing_key(settings: Settings | None = None) -> bytes | None:
    """The HMAC key for packages: ``settings.model_signing_key`` if that setting
    exists, else the ``OVERREAD_MODEL_SIGNING_KEY`` environment variable, else None."""
    value = getattr(settings, "model_signing_key", None) if settings is not None else None
    if value is None:
        value = os.environ.get(SIGNING_KEY_ENV) or None
    if value is None:
        return None
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    return str(value).encode()


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+-]", version))


#: What says a file is still the one read: device, inode, size, modification and
#: change times. A package directory swapped by a rename keeps neither the inode nor
#: the change time, even where its manifest keeps the old modification time (as
#: ``cp -a``, ``rsync -a`` and ``tar -x`` leave it).
FileStamp = tuple[int, int, int, int, int]


def file_stamp(path: Path) -> FileStamp | None:
    """``path``'s :data:`FileStamp` (``None`` when it cannot be read)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class PackageEntry:
    """A package found in the registry (not yet verified)."""

    name: str
    version: str
    path: Path
    source: str  # "registry" or "bundled"
    trained: bool
    calibrated: bool = True


class Registry:
    """Imported and bundled model packages, resolved by alias, name or path.

    Parameters
    ----------
    root
        Directory of imported packages and ``aliases.json`` (created on demand).
    include_bundled
        Whether the packages shipped with overread are part of the registry.
    key
        HMAC key that every package must carry a valid signature for, or None.
    """

    def __init__(
        self, root: Path | str, *, include_bundled: bool = True, key: bytes | None = None
    ) -> None:
        self.root = Path(root)
        self.include_bundled = include_bundled
        self.key = key
        self._lock = threading.Lock()
        self._aliases_stamp: tuple[int, int, int] | None = None
        self._aliases: dict[str, str] = {}
        self._history: dict[str, list[str]] = {}
        self._loaded: dict[tuple[Path, FileStamp], ModelPackage] = {}
        self._manifests: dict[Path, tuple[FileStamp, Manifest]] = {}

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Registry:
        """The registry at ``settings.model_registry`` (default ``data_dir/models``)."""
        if settings is None:
            from overread.config import load_settings

            settings = load_settings()
        root = settings.model_registry or settings.data_dir / "models"
        return cls(root, key=signing_key(settings))

    # -- packages ---------------------------------------------------------------
    def entries(self) -> list[PackageEntry]:
        """Every package directory found, imported ones first; manifests are read, not verified."""
        found: list[PackageEntry] = []
        sources = [("registry", self.root)]
        if self.include_bundled:
            sources.append(("bundled", bundled_dir()))
        for source, base in sources:
            if not base.is_dir():
                continue
            for manifest_path in sorted(base.glob(f"*/{MANIFEST_NAME}")) + sorted(
                base.glob(f"*/*/{MANIFEST_NAME}")
            ):
                if any(part.startswith(".") for part in manifest_path.relative_to(base).parts):
                    continue  # a package being written or imported right now
                try:
                    manifest = self._manifest(manifest_path)
                except ModelPackageError as exc:
                    logger.warning("skipping %s", exc)
                    continue
                found.append(
                    PackageEntry(
                        manifest.name,
                        manifest.version,
                        manifest_path.parent,
                        source,
                        manifest.trained,
                        manifest.calibrated,
                    )
                )
        return found

    def _manifest(self, manifest_path: Path) -> Manifest:
        """The parsed manifest at ``manifest_path``, parsed again only when the file
        changes (its :func:`file_stamp`; a worker resolves its model once per study)."""
        stamp = file_stamp(manifest_path)
        if stamp is not None:
            with self._lock:
                cached = self._manifests.get(manifest_path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        manifest = _parse_manifest(manifest_path.parent)
        if stamp is not None:
            with self._lock:
                self._manifests[manifest_path] = (stamp, manifest)
        return manifest

    def _find(self, name: str, version: str | None) -> PackageEntry:
        candidates = [e for e in self.entries() if e.name == name]
        if version is not None:
            candidates = [e for e in candidates if e.version == version]
        if not candidates:
            what = f"{name}@{version}" if version else name
            raise ModelPackageError(f"no model package {what!r} in {self.root} or bundled")
        # Highest version; at equal versions, imported beats bundled (stable sort).
        candidates.sort(key=lambda e: (_version_key(e.version), e.source == "registry"))
        return candidates[-1]

    def resolve(self, ref: str) -> Path:
        """The package path a reference (path, alias, ``name@version``, name) points to."""
        as_path = Path(ref)
        if as_path.exists():
            return as_path
        aliases = self.aliases()
        seen = set()
        while ref in aliases and ref not in seen:
            seen.add(ref)
            ref = aliases[ref]
        name, _, version = ref.partition("@")
        return self._find(name, version or None).path

    def load(self, ref: str) -> ModelPackage:
        """Resolve and load (verify) a package; verified packages are cached per manifest."""
        path = self.resolve(ref)
        stamped = path / MANIFEST_NAME if path.is_dir() else path  # a .zip: the archive itself
        stamp = file_stamp(stamped) if stamped.is_file() else None
        if stamp is None:
            return load_package(path, key=self.key)
        cache_key = (path.resolve(), stamp)
        with self._lock:
            cached = self._loaded.get(cache_key)
        if cached is not None:
            return cached
        package = load_package(path, key=self.key)
        with self._lock:
            self._loaded[cache_key] = package
        return package

    def find_by_sha256(self, sha256: str, *, name: str | None = None) -> ModelPackage:
        """Load (verify) the package whose manifest hash is ``sha256``.

        Packages named ``name`` are tried first; any other package may match too,
        since a hash, not a name, says which package is meant.

        Raises
        ------
        ModelPackageError
            If no imported or bundled package has that hash.
        """
        entries = self.entries()
        entries.sort(key=lambda e: e.name != name)
        for entry in entries:
            try:
                found = _parse_manifest(entry.path).content_sha256()
            except ModelPackageError:
                continue
            if found == sha256:
                return self.load(str(entry.path))
        what = f"{name} " if name else ""
        raise ModelPackageError(
            f"no package {what}with sha256 {sha256[:12]}... in {self.root} or bundled"
        )

    def ensemble_members(self, package: ModelPackage) -> list[ModelPackage]:
        """An ensemble's member packages, each found by its hash and verified.

        Raises
        ------
        ModelPackageError
            One line naming the first member that is missing or does not fit.
        """
        section = package.manifest.ensemble
        if section is None:
            raise ModelPackageError(f"{package.name} {package.version} is not an ensemble")
        members = []
        for member in section.members:
            try:
                found = self.find_by_sha256(member.sha256, name=member.name)
            except ModelPackageError as exc:
                raise ModelPackageError(
                    f"ensemble {package.name} {package.version}: member {member.name} "
                    f"{member.version} (sha256 {member.sha256[:12]}...) is missing: {exc}"
                ) from None
            if found.labels != package.labels or found.manifest.input != package.manifest.input:
                raise ModelPackageError(
                    f"ensemble {package.name} {package.version}: member {member.name} "
                    f"{member.version} has other labels or preprocessing than the ensemble"
                )
            members.append(found)
        return members

    def import_package(self, source: Path | str) -> Path:
        """Verify a package (directory or .zip) and copy it to ``<root>/<name>/<version>``.

        Importing the identical package again is a no-op; a different package with
        the same name and version is refused.
        """
        package = load_package(source, key=self.key)
        target = self.root / package.name / package.version
        if target.exists():
            existing = _parse_manifest(target)
            if existing.content_sha256() == package.sha256:
                return target
            raise ModelPackageError(
                f"{target}: a different package {package.name} {package.version} is already imported"
            )
        staging = staging_dir(target)  # an unwritable registry: one ModelPackageError
        try:
            shutil.copytree(package.path, staging, dirs_exist_ok=True)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if Path(source).is_file() and zipfile.is_zipfile(source):
            shutil.rmtree(package.path, ignore_errors=True)
        return target

    # -- aliases ----------------------------------------------------------------
    @property
    def aliases_path(self) -> Path:
        """The alias file."""
        return self.root / ALIASES_NAME

    def _reload_aliases(self) -> None:
        path = self.aliases_path
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._aliases, self._history, self._aliases_stamp = {}, {}, None
            return
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._aliases_stamp:
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            aliases = {str(k): str(v) for k, v in data.get("aliases", {}).items()}
            history = {str(k): [str(x) for x in v] for k, v in data.get("history", {}).items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelPackageError(f"{path}: unreadable alias file: {exc}") from None
        self._aliases, self._history, self._aliases_stamp = aliases, history, stamp

    def aliases(self) -> dict[str, str]:
        """Current aliases (re-read from disk if the file changed)."""
        with self._lock:
            self._reload_aliases()
            return dict(self._aliases)

    def _write_aliases(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"aliases": self._aliases, "history": self._history}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".aliases-", dir=self.root)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.aliases_path)
        self._aliases_stamp = None

    def set_alias(self, alias: str, ref: str) -> str:
        """Point ``alias`` at a package (``name@version`` or ``name``); returns the target.

        The target must exist and verify. The previous target is kept for
        :meth:`rollback`.
        """
        if "@" in alias or Path(alias).exists():
            raise ModelPackageError(f"invalid alias name {alias!r}")
        package = self.load(ref)
        target = f"{package.name}@{package.version}"
        with self._lock:
            self._reload_aliases()
            previous = self._aliases.get(alias)
            if previous is not None and previous != target:
                self._history.setdefault(alias, []).append(previous)
            self._aliases[alias] = target
            self._write_aliases()
        return target

    def rollback(self, alias: str) -> str:
        """Point ``alias`` back at its previous target; returns that target."""
        with self._lock:
            self._reload_aliases()
            history = self._history.get(alias, [])
            if not history:
                raise ModelPackageError(f"alias {alias!r} has no earlier version to roll back to")
            self._aliases[alias] = history.pop()
            self._write_aliases()
            return self._aliases[alias]

    def remove_alias(self, alias: str) -> None:
        """Delete an alias (names then resolve to their highest version again)."""
        with self._lock:
            self._reload_aliases()
            if alias not in self._aliases:
                raise ModelPackageError(f"no alias {alias!r}")
            del self._aliases[alias]
            self._history.pop(alias, None)
            self._write_aliases()


def manifest_of(path: Path) -> Manifest:
    """Read (without verifying) a package's manifest."""
    return _parse_manifest(path)


__all__ = [
    "ALIASES_NAME",
    "FileStamp",
    "PackageEntry",
    "Registry",
    "bundled_dir",
    "file_stamp",
    "manifest_of",
    "signing_key",
]
