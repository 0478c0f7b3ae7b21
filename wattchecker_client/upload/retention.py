"""Retention: closed hours older than ``retention_days`` leave the SD card, once BigQuery has them.

Its own job, started by the daemon in its own thread whether or not BigQuery
is configured: an hourly pass must not hold up the uploader's queue or the
main thread's watchdog, and its first pass after an upgrade may summarise a
year of hours. With uploads configured it reads each sink's ledger (BigQuery's
``uploaded.json``, InfluxDB's ``influx-uploaded.json``; its own ``Ledger``
each, re-read each pass: the journal is append-only, so that reads only the
lines added since) and deletes only hours credited in every one of them; a
pending batch's hours stay until their job is resolved.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import List, Sequence

from ..clock import Clock
from ..datadir import closed_files_in, summarize_closed_hours
from .hours import hour_files
from .ledger import LEDGER_NAME, Ledger

log = logging.getLogger(__name__)

INTERVAL = 3600.0  # seconds between passes; an hour file is the smallest thing it deletes


class Retention:
    """Deletes expired closed hours; ``deleted`` counts them for the status line."""

    def __init__(self, data_dir: Path, clock: Clock, days: int, uploading: bool = False,
                 ledgers: Sequence[str] = ()) -> None:
        """``ledgers``: the file names of the configured sinks' ledgers; ``uploading``: BigQuery's alone."""
        self.data_dir = data_dir
        self.clock = clock
        self.days = days
        names = list(ledgers) or ([LEDGER_NAME] if uploading else [])
        self.ledgers: List[Ledger] = [Ledger(data_dir, compact=False, name=name) for name in names]
        self.deleted = 0

    def delete_expired(self) -> int:
        """One pass; the hours deleted. Their summaries are written first and kept forever."""
        for ledger in self.ledgers:
            ledger.reload()
        cutoff = self.clock.now() - dt.timedelta(days=self.days)
        expired = [h for h in hour_files(closed_files_in(self.data_dir)) if h.hour + dt.timedelta(hours=1) <= cutoff
                   and all(h.key in ledger for ledger in self.ledgers)]
        for stem in sorted({h.stem for h in expired}):
            summarize_closed_hours(self.data_dir, stem)  # the report's and the energy's past outlive the rows
        for hour_file in expired:
            for path in hour_file.sources:
                path.unlink(missing_ok=True)
            self.deleted += 1
            log.info("retention: deleted %s (older than %d days)", hour_file.key, self.days)
        return len(expired)

    def run(self, stop: threading.Event) -> None:
        """The retention thread: a pass at start, then hourly, until ``stop``."""
        while True:
            try:
                self.delete_expired()
            except OSError as exc:  # a read-only or failing card: the next pass tries again
                log.error("retention: cannot delete old files: %s; trying again in an hour", exc)
            except Exception:  # never a silent end: the thread lives on to try again
                log.exception("retention pass failed; trying again in an hour")
            if self.clock.sleep(INTERVAL, stop):
                return
