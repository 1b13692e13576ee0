"""The cohort feed: phantom studies as they are written, or a finished cohort reused.

A finished cohort is kept per seed, count, size and sites under the data dir.
"""

from __future__ import annotations

import csv
import json
import logging
import queue
import shutil
import subprocess
import sys
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from overread.demo.options import DemoOptions
from overread.harness import end_process

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CohortStudy:
    """One study of the cohort: its UID and its image files."""

    study_instance_uid: str
    files: tuple[Path, ...]


def cohort_dir(data_dir: Path, *, seed: int, studies: int, size: int, sites: int = 4) -> Path:
    """Where the cohort for these parameters is kept (reused once complete)."""
    return data_dir / "cohorts" / f"seed{seed}-n{studies}-{size}px-{sites}sites"


def cohort_studies(cohort: Path) -> list[CohortStudy]:
    """A finished cohort's studies, in the order they were generated (``labels.csv``)."""
    by_study: dict[str, list[Path]] = defaultdict(list)
    with (cohort / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            by_study[row["StudyInstanceUID"]].append(cohort / row["Path"])
    return [CohortStudy(uid, tuple(sorted(files))) for uid, files in by_study.items()]


def is_complete(cohort: Path) -> bool:
    """Whether a cohort folder was finished (``cohort.json`` is written last)."""
    return (cohort / "cohort.json").is_file() and (cohort / "labels.csv").is_file()


class CohortFeed:
    """The cohort's studies as they become available.

    A finished cohort is read from ``labels.csv``; otherwise a generator process
    (``python -m overread.phantom.stream``) writes it and announces each study, so
    the first study can be sent while the rest are rendered. The generator is a
    fresh interpreter rather than a fork of this threaded process.
    """

    _END = CohortStudy("", ())

    def __init__(self, options: DemoOptions) -> None:
        self.path = cohort_dir(
            options.data_dir,
            seed=options.seed,
            studies=options.studies,
            size=options.size,
            sites=options.sites,
        )
        self.options = options
        self.total = options.studies
        self.generated = 0
        self.reused = False
        self.error: str | None = None
        self._queue: queue.Queue[CohortStudy] = queue.Queue()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._log: IO[str] | None = None

    def start(self) -> None:
        """Queue a finished cohort, or start generating one."""
        if is_complete(self.path):
            self.reused = True
            studies = cohort_studies(self.path)
            self.generated = len(studies)
            for study in studies:
                self._queue.put(study)
            self._queue.put(self._END)
            return
        if self.path.exists():  # an interrupted generation: start again
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        self._log = (self.path.parent / f"{self.path.name}.log").open("w")
        command = [
            sys.executable,
            "-m",
            "overread.phantom.stream",
            str(self.path),
            f"--n={self.options.studies}",
            f"--seed={self.options.seed}",
            f"--size={self.options.size}",
            f"--sites={self.options.sites}",
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="overread-demo-cohort", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        complete = False
        for line in self._process.stdout:
            message = json.loads(line)
            if message.get("complete"):
                complete = True
                continue
            self.generated += 1
            self._queue.put(
                CohortStudy(str(message["study_instance_uid"]), (self.path / message["path"],))
            )
        status = self._process.wait()
        if not complete and status >= 0:  # negative: ended by our own signal
            log = Path(self._log.name).read_text().strip() if self._log else ""
            self.error = f"the cohort generator exited with status {status}: {log[-300:]}"
            logger.error("%s", self.error)
        self._queue.put(self._END)

    def next(self, stop: threading.Event) -> CohortStudy | None:
        """The next study, waiting for it to be written; None when none are left or ``stop``."""
        while not stop.is_set():
            try:
                study = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            return None if study is self._END else study
        return None

    def stop(self) -> None:
        """End the generator, if still running, and wait for it."""
        if self._process is not None:
            end_process(self._process)
        if self._reader is not None:
            self._reader.join(5)
        if self._log is not None:
            self._log.close()


__all__ = ["CohortFeed", "CohortStudy", "cohort_dir", "cohort_studies", "is_complete"]
