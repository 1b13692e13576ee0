"""What the CPU offers the runtimes: its model and the instruction sets INT8 and bf16 need.

INT8 convolutions are fast only with VNNI (AVX-512 VNNI or AVX-VNNI) and fastest
with AMX; bf16 needs AVX-512 BF16 or AMX. Every benchmark records these, since
they decide which runtime and precision wins on a given node.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: /proc/cpuinfo flags that decide INT8 and bf16 speed, by the name reported.
CPU_FEATURES: dict[str, str] = {
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}


def cpu_description() -> dict[str, Any]:
    """CPU model, logical cores and the INT8/bf16 instruction sets (from /proc/cpuinfo).

    ``vnni`` is true with AVX-512 VNNI or AVX-VNNI, ``amx`` with AMX INT8 tiles.
    On a system without /proc/cpuinfo the flags are all false and the model is
    what :func:`platform.processor` says.
    """
    model = platform.processor() or "unknown CPU"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    features = {name: flag in flags for name, flag in CPU_FEATURES.items()}
    return {
        "cpu": model,
        "cores": os.cpu_count() or 0,
        "cpu_flags": features,
        "vnni": features["avx512_vnni"] or features["avx_vnni"],
        "amx": features["amx_int8"],
    }


__all__ = ["CPU_FEATURES", "cpu_description"]
