"""The connection gate: silent connections wait, speakers are handed on, the rest close."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from overread.service.admission import ConnectionGate


def _wait_for(condition: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.01)
    return False


def test_a_connection_is_handed_on_once_it_speaks_and_a_silent_one_is_closed() -> None:
    handed: list[socket.socket] = []
    ready = threading.Event()

    def handoff(connection: socket.socket, _address: object) -> None:
        handed.append(connection)
        ready.set()

    gate = ConnectionGate(handoff, timeout=1.0)
    gate.start()
    speaker, speaker_far = socket.socketpair()
    silent, silent_far = socket.socketpair()
    try:
        gate.admit(speaker, "speaker")
        gate.admit(silent, "silent")
        assert gate.waiting == 2
        speaker_far.sendall(b"\x01")
        assert ready.wait(10)
        assert handed == [speaker]
        # The silent one is closed by the gate: its far end reads end-of-stream.
        silent_far.settimeout(10)
        assert silent_far.recv(1) == b""
        assert gate.waiting == 0 and gate.closed_silent == 1
        # The handed-on connection is left open for its new owner.
        speaker_far.sendall(b"\x02")
        assert speaker.recv(2) == b"\x01\x02"
    finally:
        gate.stop()
        for s in (speaker, speaker_far, silent, silent_far):
            s.close()


def test_past_capacity_the_longest_waiting_connection_is_closed_first() -> None:
    gate = ConnectionGate(lambda _c, _a: None, timeout=60.0, capacity=2)
    gate.start()
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for index, (near, _) in enumerate(pairs):
            gate.admit(near, index)
        assert gate.waiting == 2
        first_far = pairs[0][1]
        first_far.settimeout(10)
        assert first_far.recv(1) == b""
        for _, far in pairs[1:]:
            far.setblocking(False)
            with pytest.raises(BlockingIOError):  # still open: nothing to read, no EOF
                far.recv(1)
    finally:
        gate.stop()
        for near, far in pairs:
            near.close()
            far.close()
    # Stopping closes whatever still waits.
    assert _wait_for(lambda: gate.waiting == 0)
