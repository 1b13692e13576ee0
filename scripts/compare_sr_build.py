"""SR build and encoding per study: the highdicom-built reference against the builder
that encodes the content tree directly (docs/benchmarks.md).

Builds the SR of one chest X-ray study (the 14 CheXpert findings of the default model
on a real 2614x3072 DX header) with each builder in turn, alternating, and encodes it
with ``pydicom.dcmwrite`` as the worker does before storing and sending it. Prints one
JSON object: the median and the 90th percentile, in ms, of the build, the encoding and
both, per builder, and the load average before and after.

    PYTHONPATH=src python scripts/compare_sr_build.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the reference builder and the fixtures live in tests/

from tests.service.outputs import sr_reference  # noqa: E402
from tests.service.outputs.conftest import DX_CHEST, make_prediction  # noqa: E402

from overread.service import outputs  # noqa: E402


def _time(builder: Any, readings: list[Any]) -> tuple[float, float]:
    started = time.perf_counter()
    sr = builder.build_study_sr(readings)
    built = time.perf_counter()
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
    return (built - started) * 1000, (time.perf_counter() - built) * 1000


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    header = pydicom.dcmread(DX_CHEST, stop_before_pixels=True)
    readings = [(make_prediction(False), header)]
    builders = {"highdicom (before)": sr_reference, "encoded (now)": outputs}
    for builder in builders.values():  # one-off costs: highdicom's tables, the caches
        _time(builder, readings)
    load_before = os.getloadavg()
    times: dict[str, dict[str, list[float]]] = {
        name: {"build": [], "encode": [], "total": []} for name in builders
    }
    for _ in range(args.rounds):
        for name, builder in builders.items():
            build, encode = _time(builder, readings)
            times[name]["build"].append(build)
            times[name]["encode"].append(encode)
            times[name]["total"].append(build + encode)
    result: dict[str, Any] = {
        name: {part: _summary(values) for part, values in parts.items()}
        for name, parts in times.items()
    }
    old, new = (result[name]["total"]["median_ms"] for name in builders)
    result["speedup_median_total"] = round(old / new, 2)
    result["rounds"] = args.rounds
    result["load_average_before"] = [round(x, 2) for x in load_before]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
