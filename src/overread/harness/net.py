"""Waiting for loopback listeners, and ending the child processes behind them."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from overread.errors import ServiceError
from overread.netutil import free_port

_SOCKET_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def listening(port: int) -> bool:
    """Whether something listens on TCP ``port`` on this machine.

    On Linux the kernel's socket table is read rather than connecting: a probe
    connection that closes at once is an aborted association to a DICOM peer,
    which some peers log or count. Elsewhere a loopback connection is tried.
    """
    if not any(table.exists() for table in _SOCKET_TABLES):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False
    wanted = f":{port:04X}"
    for table in _SOCKET_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == "0A":  # LISTEN
                return True
    return False


def wait_port(
    port: int, timeout: float = 30.0, process: subprocess.Popen[Any] | None = None
) -> None:
    """Wait until something listens on ``port``.

    Raises
    ------
    ServiceError
        When nothing listens within ``timeout`` seconds, or ``process`` (the child
        expected to listen) exits first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(
                f"the process for port {port} exited with status {process.returncode}"
            )
        if listening(port):
            return
        time.sleep(0.02)
    raise ServiceError(f"nothing listening on port {port} after {timeout:g} s")


def end_process(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM a child still running, SIGKILL it after ``grace`` seconds, and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


__all__ = ["end_process", "free_port", "listening", "wait_port"]
