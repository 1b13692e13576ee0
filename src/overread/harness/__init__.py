"""The loopback harness: free ports, a fake PACS, a modality and a running gateway.

Everything here runs on ``127.0.0.1`` with real peers (DCMTK ``storescp`` and
``storescu``, or pynetdicom), for the demo, the benchmarks and the tests. The
gateway launcher, :mod:`overread.harness.gateway`, is imported on its own: it loads
the whole gateway, which the PACS and the modality do not need.
"""

from __future__ import annotations

from overread.harness.modality import (
    GATEWAY_AE_TITLE,
    MODALITY_AE_TITLE,
    send_parallel,
    storescu,
    write_chest_dx,
)
from overread.harness.net import end_process, free_port, listening, wait_port
from overread.harness.pacs import (
    COMPREHENSIVE_SR,
    PACS_AE_TITLE,
    SR_CLASS_ROOT,
    PacsCounts,
    PacsLike,
    PacsWatcher,
    PynetdicomPacs,
    StorescpPacs,
    find_dcmtk_storescp,
    sr_studies,
)

__all__ = [
    "COMPREHENSIVE_SR",
    "GATEWAY_AE_TITLE",
    "MODALITY_AE_TITLE",
    "PACS_AE_TITLE",
    "SR_CLASS_ROOT",
    "PacsCounts",
    "PacsLike",
    "PacsWatcher",
    "PynetdicomPacs",
    "StorescpPacs",
    "end_process",
    "find_dcmtk_storescp",
    "free_port",
    "listening",
    "send_parallel",
    "sr_studies",
    "storescu",
    "wait_port",
    "write_chest_dx",
]
