"""The demo's modality: the cohort's studies by C-STORE, with Poisson arrivals."""

from __future__ import annotations

import logging
import random
import threading
import time

from overread.demo.cohort import CohortFeed
from overread.harness import MODALITY_AE_TITLE

logger = logging.getLogger(__name__)


class DemoModality(threading.Thread):
    """Sends the cohort's studies to the gateway by C-STORE, one study per association.

    Arrivals are a Poisson process: the gaps between studies are exponential with a
    mean of ``60 / rate`` seconds, drawn from ``seed``. A study not yet generated is
    sent as soon as it is written.
    """

    def __init__(
        self,
        feed: CohortFeed,
        *,
        port: int,
        called_ae: str,
        rate: float,
        seed: int,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="overread-demo-modality", daemon=True)
        self.feed = feed
        self.port = port
        self.called_ae = called_ae
        self.mean_gap = 60.0 / rate
        self.random = random.Random(seed)
        self.stop_event = stop
        self.sent_studies = 0
        self.sent_images = 0
        self.failures = 0
        self.first_sent_at: float | None = None  # time.monotonic()
        self.sent_uids: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        from overread.service.scu import send_files

        due = time.monotonic()
        while True:
            study = self.feed.next(self.stop_event)
            if study is None:
                return
            if self.stop_event.wait(max(0.0, due - time.monotonic())):
                return
            # The next arrival: an exponential gap after this one (or after now, when
            # this study was late because it was still being generated).
            due = max(due, time.monotonic()) + self.random.expovariate(1.0 / self.mean_gap)
            statuses = send_files(
                list(study.files),
                ae_title=self.called_ae,
                host="127.0.0.1",
                port=self.port,
                calling_ae=MODALITY_AE_TITLE,
            )
            failed = [s for s in statuses if not s.ok]
            if failed:
                self.failures += 1
                self.errors.append(f"{study.study_instance_uid}: {failed[0].error}")
                logger.warning("sending %s failed: %s", study.study_instance_uid, failed[0].error)
                continue
            if self.first_sent_at is None:
                self.first_sent_at = time.monotonic()
            self.sent_studies += 1
            self.sent_images += len(statuses)
            self.sent_uids.append(study.study_instance_uid)


__all__ = ["DemoModality"]
