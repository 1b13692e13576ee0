"""The fake PACS: a C-STORE SCP on loopback that receives what the gateway sends.

Two kinds, one interface (:class:`PacsLike`): DCMTK's ``storescp`` in a child
process (:class:`StorescpPacs`), or a pynetdicom SCP in this process
(:class:`PynetdicomPacs`). :class:`PacsWatcher` notes when each study's Structured
Report is complete in a ``storescp`` folder, for timing.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from overread.errors import ConfigError, InvalidDicomError
from overread.harness.net import end_process, free_port, listening
from overread.imaging import read_metadata

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
#: Every Structured Report storage SOP class starts with this root.
SR_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.88."
PACS_AE_TITLE = "PACSAE"


@dataclass(frozen=True)
class PacsCounts:
    """What a PACS holds: Structured Reports and objects of any kind."""

    srs: int
    objects: int
    first_sr_at: float | None = None  # wall-clock time the first SR arrived


class PacsLike(Protocol):
    """What a caller needs of a PACS."""

    out: Path
    ae_title: str
    port: int
    kind: str

    def start(self) -> int: ...

    def counts(self) -> PacsCounts: ...

    def stop(self) -> None: ...


class PynetdicomPacs:
    """A pynetdicom C-STORE SCP in this process; objects land in ``out``.

    Parameters
    ----------
    out
        Folder receiving one file per SOP instance (``<SOPInstanceUID>.dcm``).
    ae_title
        The PACS's AE title, as configured on the gateway's destination.
    """

    kind = "pynetdicom"

    def __init__(self, out: Path, ae_title: str = PACS_AE_TITLE) -> None:
        self.out = out
        self.ae_title = ae_title
        self.port = 0
        self._lock = threading.Lock()
        self._srs = 0
        self._objects = 0
        self._first_sr_at: float | None = None
        self._server: ThreadedAssociationServer | None = None
        out.mkdir(parents=True, exist_ok=True)

    def _on_store(self, event: evt.Event) -> int:
        dataset: Dataset = event.dataset
        dataset.file_meta = event.file_meta
        dataset.save_as(self.out / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
        with self._lock:
            self._objects += 1
            if str(dataset.SOPClassUID).startswith(SR_CLASS_ROOT):
                self._srs += 1
                if self._first_sr_at is None:
                    self._first_sr_at = time.time()
        return 0x0000

    def start(self) -> int:
        """Listen on a free loopback port; return it."""
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        if server is None:  # pragma: no cover - only a blocking server returns None
            raise ConfigError("the PACS could not start listening")
        self._server = server
        self.port = int(server.server_address[1])
        return self.port

    def counts(self) -> PacsCounts:
        """Objects received so far."""
        with self._lock:
            return PacsCounts(self._srs, self._objects, self._first_sr_at)

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def find_dcmtk_storescp() -> str | None:
    """DCMTK's ``storescp`` on PATH (skipping pynetdicom's script of the same name)."""
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        candidate = Path(folder or ".") / "storescp"
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        try:
            version = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "dcmtk" in version.lower():
            return str(candidate)
    return None


class StorescpPacs:
    """DCMTK's ``storescp`` as the PACS, in a child process; objects land in ``out``.

    ``storescp`` names each file ``<modality>.<SOPInstanceUID>`` (``SRc.`` for a
    Comprehensive SR), so the counts come from the folder listing.

    Parameters
    ----------
    out
        The folder ``storescp`` writes into (created).
    executable
        The ``storescp`` to run (default: the first on PATH).
    ae_title
        Its AE title.
    fork
        Take each association in a process of its own (``storescp --fork``).
    """

    kind = "dcmtk"

    def __init__(
        self,
        out: Path,
        executable: str = "storescp",
        ae_title: str = PACS_AE_TITLE,
        *,
        fork: bool = False,
    ) -> None:
        self.out = out
        self.ae_title = ae_title
        self.executable = executable
        self.fork = fork
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        out.mkdir(parents=True, exist_ok=True)

    def start(self, attempts: int = 3, port: int | None = None) -> int:
        """Start ``storescp`` on ``port`` (default: a free loopback port); return it once it listens.

        A port found free can be taken by another process before ``storescp`` binds
        it, so a free port is tried ``attempts`` times.
        """
        for _ in range(1 if port else attempts):
            candidate = port or free_port()
            process = subprocess.Popen(
                [
                    self.executable,
                    *(["--fork"] if self.fork else []),
                    "-aet",
                    self.ae_title,
                    "-od",
                    str(self.out),
                    str(candidate),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                if listening(candidate):
                    self.process, self.port = process, candidate
                    return candidate
                time.sleep(0.02)
            end_process(process, grace=0)  # the port was taken meanwhile, or it never listened
        raise ConfigError(f"{self.executable} did not start listening on a loopback port")

    def files(self) -> list[Path]:
        """The files received so far, by name."""
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def counts(self) -> PacsCounts:
        """Objects received so far (files in the output folder)."""
        try:
            entries = list(os.scandir(self.out))
        except OSError:
            return PacsCounts(0, 0)
        srs = [e for e in entries if e.name.startswith("SR")]
        first = min((e.stat().st_mtime for e in srs), default=None)
        return PacsCounts(len(srs), len(entries), first)

    def stop(self) -> None:
        """Stop ``storescp`` and wait for it (idempotent)."""
        if self.process is not None:
            end_process(self.process)
            self.process = None


def sr_studies(pacs_dir: Path) -> set[str]:
    """The Study Instance UIDs of the Structured Reports stored in ``pacs_dir``."""
    studies: set[str] = set()
    for path in pacs_dir.iterdir():
        try:
            header = read_metadata(path)
        except (OSError, InvalidDicomError):
            continue
        if (header.sop_class_uid or "").startswith(SR_CLASS_ROOT) and header.study_instance_uid:
            studies.add(header.study_instance_uid)
    return studies


class PacsWatcher:
    """Notes when each study's SR is complete in ``storescp``'s output folder."""

    def __init__(self, folder: Path, interval: float = 0.002) -> None:
        self.folder = folder
        self.interval = interval
        self.arrivals: dict[str, float] = {}
        #: SR files per study (a study with two of one send is a duplicate).
        self.counts: dict[str, int] = {}
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pacs-watch", daemon=True)

    def start(self) -> None:
        """Start polling (every ``interval`` s, 2 ms by default)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                entries = list(os.scandir(self.folder))
            except OSError:
                entries = []
            for entry in entries:
                if entry.name in self._seen or not entry.name.startswith("SR"):
                    continue
                seen_at = time.time()
                try:
                    study = read_metadata(entry.path).study_instance_uid
                except Exception:  # still being written: look again on the next pass
                    continue
                if not study:
                    continue
                self._seen.add(entry.name)
                with self._lock:
                    self.arrivals.setdefault(study, seen_at)
                    self.counts[study] = self.counts.get(study, 0) + 1
            self._stop.wait(self.interval)

    def arrived(self, study: str) -> float | None:
        """Wall-clock time the first SR of ``study`` was complete, or ``None``."""
        with self._lock:
            return self.arrivals.get(study)


__all__ = [
    "COMPREHENSIVE_SR",
    "PACS_AE_TITLE",
    "SR_CLASS_ROOT",
    "PacsCounts",
    "PacsLike",
    "PacsWatcher",
    "PynetdicomPacs",
    "StorescpPacs",
    "find_dcmtk_storescp",
    "sr_studies",
]
