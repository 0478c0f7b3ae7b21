"""What every upload sink shares: the closed hours its own ledger lacks, queued oldest first, and the
writer's announcements of newly closed hours."""

from __future__ import annotations

import abc
import logging
import queue
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

from ..clock import Backoff, Clock
from ..datadir import closed_name
from ..writer import ClosedFile, closed_files_in, parse_closed
from .errors import AccessDenied, TransientError
from .hours import HourFile, hour_files, hour_key, open_hours
from .ledger import Ledger

log = logging.getLogger(__name__)


class Outage:
    """One warning per outage (and one error more if access is denied in it), and a line at its end."""

    def __init__(self, clock: Clock, label: str, server: str) -> None:
        self.clock = clock
        self.label = label  # "upload", "InfluxDB upload"
        self.server = server  # "BigQuery", "InfluxDB"
        self.since: Optional[float] = None
        self.logged: Set[str] = set()

    def waiting(self, exc: TransientError, key: str, denied: str) -> None:
        """``denied``: the error line for an AccessDenied (what to fix)."""
        if self.since is None:
            self.since = self.clock.monotonic()
        kind = "denied" if isinstance(exc, AccessDenied) else "waiting"
        if kind in self.logged:
            log.debug("%s of %s still waiting: %s", self.label, key, exc)
        elif kind == "denied":
            log.error("%s", denied)
        else:
            log.warning("%s of %s must wait: %s; will retry", self.label, key, exc)
        self.logged.add(kind)

    def over(self) -> None:
        if self.since is not None:
            log.info("%s reachable again after %.0f s", self.server, self.clock.monotonic() - self.since)
        self.since = None
        self.logged.clear()


class HourSink(abc.ABC):
    """The queue of one sink (BigQuery, InfluxDB): hours from the data dir that ``ledger`` does not hold."""

    label = "upload"  # in log lines
    data_dir: Path
    clock: Clock
    ledger: Ledger
    backoff: Backoff
    _queued: Dict[str, HourFile]
    _next_try: float

    @abc.abstractmethod
    def step(self) -> bool:
        """Send the oldest queued batch if its time has come; True if there is more to do now."""

    def close(self) -> None:
        """Let go of connections when the thread ends."""

    def run(self, closed_files: "queue.Queue[ClosedFile]", stop: threading.Event) -> None:
        """The sink's thread: the backlog first, then each hour as the writer closes it."""
        self.queue(self.backlog(settled_only=True))
        if self._queued:
            log.info("%s backlog: %d hour(s)", self.label, len(self._queued))
        while not stop.is_set():
            try:
                busy = self.step()
            except Exception:  # a full disk moving a file, ...: log it, wait, go on
                log.exception("%s step failed; retrying later", self.label)
                self._next_try = self.clock.monotonic() + self.backoff.next_delay()
                busy = False
            self.take_announcements(closed_files, timeout=0 if busy else 1.0)
        self.close()

    def backlog(self, settled_only: bool = False) -> List[HourFile]:
        """Closed hours in the data dir that the ledger does not hold, oldest first.

        ``settled_only``: without the hours the writer is closing in another format right
        now; the running service hears of those once every format is closed.
        """
        hours = [h for h in hour_files(closed_files_in(self.data_dir)) if h.key not in self.ledger]
        if settled_only:
            closing = open_hours(self.data_dir)
            hours = [h for h in hours if (h.stem, h.hour) not in closing]
        return hours

    def queue(self, files: Sequence[HourFile]) -> None:
        for hour_file in files:
            self._queued.setdefault(hour_file.key, hour_file)

    def announced(self, closed: ClosedFile) -> None:
        """The writer closed a file: queue its hour, with every format present now."""
        parsed = parse_closed(closed.path)
        if parsed is None:
            return
        stem, _, hour, part = parsed
        key = hour_key(stem, hour, part)
        self._queued.pop(key, None)
        # the hour's formats by name and a stat each: a listing per file grew with the years of files
        present = [p for p in (self.data_dir / closed_name(stem, fmt, hour, part) for fmt in ("json", "csv"))
                   if p.exists()]
        for hour_file in hour_files(present):
            if key not in self.ledger:
                self._queued[key] = hour_file

    @property
    def pending(self) -> int:
        return len(self._queued)

    def take_announcements(self, closed_files: "queue.Queue[ClosedFile]", timeout: float) -> None:
        """Every file closed meanwhile, waiting up to ``timeout`` for the first.

        All of them: taking one per batch made one load job per hour whenever
        the hours closed faster than BigQuery loaded them, and then the queue
        never caught up.
        """
        closed = self.clock.get(closed_files, timeout=timeout)
        while closed is not None:
            self.announced(closed)
            closed = self.clock.get(closed_files, timeout=0)
