"""Generate a cohort in a process of its own and announce each study as it is written.

``python -m overread.phantom.stream OUT --n 300`` writes the cohort exactly as
:func:`~overread.phantom.generate_cohort` does and prints one JSON line per study
to standard output as soon as the study's files are complete::

    {"index": 0, "study_instance_uid": "1.2...", "path": "images/patient00001/study1/view1_frontal.dcm"}

then ``{"complete": true, "studies": N}`` once ``cohort.json`` (written last) exists.
A consumer (``overread demo``) can send the first studies while the rest are being
rendered, and the generator never shares a process with the consumer's threads.

The process ignores SIGINT, so a Ctrl-C in a terminal reaches only its parent,
which ends it with SIGTERM; it also stops quietly when its reader goes away.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any, TextIO

from overread.errors import OverreadError


def study_line(record: dict[str, Any]) -> str:
    """The JSON line announcing one written study (see the module docstring)."""
    return json.dumps(
        {
            "index": record["index"],
            "study_instance_uid": record["uids"]["study"],
            "path": record["path"],
        }
    )


def stream_cohort(
    out_dir: str, *, n: int, seed: int, size: int, sites: int, workers: int, out: TextIO
) -> int:
    """Write the cohort to ``out_dir``, announcing each study on ``out``; return the count."""
    from overread.phantom.cohort import CohortOptions, write_cohort

    options = CohortOptions(n=n, seed=seed, rows=size, cols=size, sites=sites, workers=workers)

    def _announce(record: dict[str, Any]) -> None:
        out.write(study_line(record) + "\n")
        out.flush()

    summary = write_cohort(out_dir, options, on_study=_announce)
    out.write(json.dumps({"complete": True, "studies": summary.studies}) + "\n")
    out.flush()
    return summary.studies


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad options)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = argparse.ArgumentParser(
        prog="python -m overread.phantom.stream",
        description="Generate a phantom cohort, printing a JSON line per study as it is written.",
    )
    parser.add_argument("out_dir")
    for option, default in (("n", None), ("seed", 0), ("size", 1024), ("sites", 4), ("workers", 1)):
        parser.add_argument(f"--{option}", type=int, default=default, required=default is None)
    options: dict[str, Any] = vars(parser.parse_args(argv))
    try:
        stream_cohort(options.pop("out_dir"), out=sys.stdout, **options)
    except OverreadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away: nobody wants the rest
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised as a subprocess
    sys.exit(main())
