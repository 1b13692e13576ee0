"""A RIS on loopback: hl7apy's MLLP server, recording each ORU^R01 and answering with
scripted acknowledgement codes (``AE`` first, to test retries; then ``AA``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message


class RisPeer:
    """An MLLP listener that records the messages it is sent and answers each in turn
    with the next of ``codes`` (``AA`` once they run out)."""

    def __init__(self, codes: list[str] | None = None) -> None:
        self.codes = list(codes or [])
        self.received: list[str] = []
        self.answered: list[str] = []
        peer = self

        class OruHandler(AbstractHandler):  # type: ignore[misc]
            def reply(self) -> str:
                incoming = parse_message(self.incoming_message, find_groups=False)
                code = peer.codes.pop(0) if peer.codes else "AA"
                peer.received.append(self.incoming_message)
                peer.answered.append(code)
                ack = Message("ACK", version="2.5")
                ack.msh.msh_3 = "RIS"
                ack.msh.msh_5 = incoming.msh.msh_3.to_er7()
                ack.msh.msh_9 = "ACK^R01^ACK"
                ack.msh.msh_10 = f"RIS{len(peer.received)}"
                ack.msh.msh_11 = "P"
                ack.msa.msa_1 = code
                ack.msa.msa_2 = incoming.msh.msh_10.to_er7()
                if code != "AA":
                    ack.msa.msa_3 = "try again later"
                return str(ack.to_mllp())

        self.server = MLLPServer("127.0.0.1", 0, {"ORU^R01^ORU_R01": (OruHandler,)}, timeout=10)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ris() -> Iterator[RisPeer]:
    """A RIS that accepts every ORU^R01 (``peer.codes`` scripts other answers)."""
    peer = RisPeer()
    yield peer
    peer.close()
