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
from typing import Dict, List, Sequence, Tuple

from .. import fileops
from ..clock import Clock
from ..datadir import CURRENT_PART, HOUR_FORMAT, closed_files_in, hour_summaries, sources_for
from .hours import HourFile, hour_files
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
        """One pass; the hours deleted. An hour goes as a unit, all its parts and formats together,
        once every part of it is in every sink (when uploading) and a summary of all its files is saved."""
        for ledger in self.ledgers:
            ledger.reload()
        cutoff = self.clock.now() - dt.timedelta(days=self.days)
        hours: Dict[Tuple[str, dt.datetime], List[HourFile]] = {}
        for unit in hour_files(closed_files_in(self.data_dir)):
            if unit.hour + dt.timedelta(hours=1) <= cutoff:
                hours.setdefault((unit.stem, unit.hour), []).append(unit)
        # an hour with a part not yet in every sink keeps every part
        hours = {key: units for key, units in hours.items()
                 if all(u.key in ledger for u in units for ledger in self.ledgers)}
        deleted = 0
        for stem in sorted({stem for stem, _ in hours}):
            sources = sources_for(self.data_dir, stem)
            summaries = hour_summaries(self.data_dir, stem, sources)  # the past outlives the rows
            for (_, hour), units in sorted((k, v) for k, v in hours.items() if k[0] == stem):
                summary = summaries.get(hour)
                if CURRENT_PART in sources.by_hour.get(hour, {}) or summary is None \
                        or not summary.covers(sources.files(hour)):
                    continue  # still written, or no summary of it: it stays (the next pass tries again)
                for unit in sorted(units, key=lambda u: -u.part):
                    for path in unit.sources:
                        fileops.unlink(path, missing_ok=True)
                fileops.sync_dir(self.data_dir)
                deleted += 1
                self.deleted += 1
                log.info("retention: deleted %s.%s (older than %d days)", stem, hour.strftime(HOUR_FORMAT), self.days)
        return deleted

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
