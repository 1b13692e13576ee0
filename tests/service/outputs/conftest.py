"""Fixtures for the results-out tests: real source images, a realistic prediction,
and real DICOM peers (DCMTK storescp, Orthanc with its DICOMweb plugin)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import deid_data
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from overread.findings import CHEXPERT_LABELS
from overread.netutil import free_port
from overread.results import FindingResult, ModelRef, Prediction

# A real digital radiograph of a chest (DX, 12-bit, MONOCHROME2, 2614x3072), shipped
# by the deid-data package. It is a veterinary (cat) chest, but every header and
# pixel property the exporters use is that of a real DX chest image.
DX_CHEST = Path(deid_data.__file__).parent / "data" / "animals" / "cat.dcm"
# A real CR header (MONOCHROME1, 16x16) from pydicom's own test corpus.
CR_SMALL = (
    Path(pydicom.__file__).parent
    / "data"
    / "test_files"
    / "dicomdirtests"
    / "77654033"
    / "CR1"
    / "6154"
)

# Probabilities, thresholds and uncertainties as a calibrated model would give them.
_SCORES = {
    "No Finding": (0.04, 0.50, 0.02),
    "Enlarged Cardiomediastinum": (0.21, 0.35, 0.06),
    "Cardiomegaly": (0.62, 0.45, 0.08),
    "Lung Opacity": (0.35, 0.40, 0.07),
    "Lung Lesion": (0.08, 0.30, 0.04),
    "Edema": (0.12, 0.40, 0.05),
    "Consolidation": (0.10, 0.30, 0.05),
    "Pneumonia": (0.06, 0.25, 0.04),
    "Atelectasis": (0.28, 0.40, 0.07),
    "Pneumothorax": (0.93, 0.50, 0.03),
    "Pleural Effusion": (0.55, 0.45, 0.09),
    "Pleural Other": (0.03, 0.20, 0.02),
    "Fracture": (0.05, 0.25, 0.03),
    "Support Devices": (0.40, 0.50, None),
}


def gaussian_heatmap(rows: int, cols: int, centre: tuple[float, float], sigma: float) -> np.ndarray:
    """A smooth blob like a CAM heatmap, peak 1 at ``centre`` (row, col fractions)."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = centre[0] * (rows - 1), centre[1] * (cols - 1)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def make_prediction(with_heatmaps: bool = True) -> Prediction:
    """A prediction as the pipeline gives it, made up without running a model."""
    findings = [
        FindingResult(label, p, p >= t, u, t)
        for label, (p, t, u) in ((lbl, _SCORES[lbl]) for lbl in CHEXPERT_LABELS)
    ]
    heatmaps = None
    if with_heatmaps:
        heatmaps = {
            # Upper right of the image: that is where the overlay must turn red.
            "Pneumothorax": gaussian_heatmap(56, 56, (0.2, 0.75), 6.0),
            "Cardiomegaly": gaussian_heatmap(56, 56, (0.6, 0.5), 10.0),
        }
    return Prediction(
        path="",
        ok=True,
        findings=findings,
        model=ModelRef("cxr-default", "1.0.0", "3f" * 32),
        heatmaps=heatmaps,
    )


@pytest.fixture
def prediction() -> Prediction:
    return make_prediction()


@pytest.fixture(scope="session")
def dx_chest() -> Dataset:
    """The real DX chest radiograph, with pixel data."""
    return pydicom.dcmread(DX_CHEST)


@pytest.fixture(scope="session")
def dx_chest_header() -> Dataset:
    return pydicom.dcmread(DX_CHEST, stop_before_pixels=True)


@pytest.fixture(scope="session")
def cr_small() -> Dataset:
    return pydicom.dcmread(CR_SMALL, force=True)


def tool_output(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # Tools echo element values in the file's character set: decode leniently.
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, errors="replace", timeout=120
    )


def dciodvfy_errors(path: Path) -> list[str]:
    """Run dicom3tools' dciodvfy; return its "Error" lines (empty = valid IOD)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    done = tool_output("dciodvfy", path)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


# ---- network peers ---------------------------------------------------------------------------


def _listening(port: int) -> bool:
    """Whether something listens on TCP ``port``, without connecting to it.

    A probe connection that closes at once is an aborted association to a DICOM
    peer, which upsets some of them (a refusing storescp then fails its next reject),
    so on Linux the kernel's socket table is read instead.
    """
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not any(t.exists() for t in tables):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False
    wanted = f":{port:04X}"
    for table in tables:
        with contextlib.suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(wanted) and fields[3] == "0A":  # 0A: LISTEN
                    return True
    return False


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"peer exited early with status {process.returncode}")
        if _listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class StoreSCP:
    port: int
    ae_title: str
    out_dir: Path


@contextlib.contextmanager
def run_storescp(out_dir: Path, *extra: str, ae_title: str = "PACSAE") -> Iterator[StoreSCP]:
    if shutil.which("storescp") is None:
        pytest.skip("DCMTK storescp is not installed")
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir.parent / f"{out_dir.name}-storescp.log"
    # A port probed free can be taken by another process before storescp binds it:
    # try a few ports before giving up, and say what storescp printed.
    for attempt in range(3):
        port = free_port()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                ["storescp", "-aet", ae_title, "-od", str(out_dir), *extra, str(port)],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(port, process)
            break
        except RuntimeError as exc:
            stop(process)
            if attempt == 2:
                raise RuntimeError(f"{exc}: {log.read_text(errors='replace').strip()}") from None
    try:
        yield StoreSCP(port, ae_title, out_dir)
    finally:
        stop(process)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A DCMTK storescp PACS (called AE "PACSAE") writing into a fresh folder."""
    with run_storescp(tmp_path / "pacs") as peer:
        yield peer


ORTHANC_PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


@dataclass
class OrthancPeer:
    http_port: int
    dicom_port: int
    ae_title: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"


@contextlib.contextmanager
def run_orthanc(root: Path, **overrides: object) -> Iterator[OrthancPeer]:
    """A private Orthanc with DICOMweb on free ports, stopped on exit."""
    binary = shutil.which("Orthanc") or shutil.which("orthanc")
    plugin = next(
        (
            d / "libOrthancDicomWeb.so"
            for d in ORTHANC_PLUGIN_DIRS
            if (d / "libOrthancDicomWeb.so").exists()
        ),
        None,
    )
    if binary is None or plugin is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    peer = OrthancPeer(free_port(), free_port(), "ORTHANC")
    config: dict[str, object] = {
        "Name": "overread-test-pacs",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "DicomAet": peer.ae_title,
        "DicomPort": peer.dicom_port,
        "HttpPort": peer.http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        **overrides,
    }
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (root / "orthanc.log").open("wb")
    process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(peer.http_port, process, timeout=60)
        wait_for_port(peer.dicom_port, process, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the plugin registers its routes last
            with contextlib.suppress(httpx.HTTPError):
                status = httpx.get(f"{peer.dicomweb}/studies", timeout=2).status_code
                if status in (200, 401):
                    break
            time.sleep(0.1)
        yield peer
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    """A private Orthanc with DICOMweb, checking called AE titles, on free ports."""
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as peer:
        yield peer
