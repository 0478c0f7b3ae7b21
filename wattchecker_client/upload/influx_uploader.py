"""Closed hour files -> InfluxDB points: each hour's rows stored once, through any outage.

The files are the buffer: the sink keeps only a list of the closed hours it
has not sent (its own ledger, ``influx-uploaded.json``, says which are sent),
and reads an hour's rows when it sends them, so an outage of a month costs no
memory. A backlog goes a meter's UTC day at a time, in write requests of up
to ``MAX_POINTS`` points; the day's hours are credited once every request of
it succeeded.

Exactly once needs no write-ahead here: a point is keyed by its measurement,
tags and second, so a request sent again (a crash between the write and the
credit, a lost answer, a ledger deleted) overwrites the same points.

Each hour's upload also sends the row before it (the previous hour's last
one) again, now that its step to the next row is known: its ``watt_seconds``
held 1 s until then; and a late part sends its whole hour again, its
neighbours' steps changed. The count does not change; the energy then is the
report's.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ..clock import Backoff, Clock, utc_epoch
from ..datadir import hour_sources
from .errors import PermanentError, TransientError
from .hours import FAILED_DIR, HourFile, day_groups, row_fields
from .influxdb import MAX_POINTS, InfluxTarget, RetryLater, chunks, point_lines, series_key
from .ledger import INFLUX_LEDGER_NAME as LEDGER_NAME
from .ledger import Ledger
from .sink import HourSink, Outage

log = logging.getLogger(__name__)

Row = Tuple[int, float, float, float]  # t, V, mA, W


def hour_union(data_dir: Path, stem: str, hour: dt.datetime) -> Tuple[List[Tuple[int, Row]], Set[int]]:
    """The one place this sink reads rows: an hour as the data folder's union holds it (each second
    once across formats and parts, JSON's values), each row with the part owning it; and the parts
    left with a readable file. A whole hour, so a late part's neighbours are sent with their steps
    corrected. PermanentError for a row that cannot be read."""
    start = utc_epoch(hour)
    sources = hour_sources(data_dir, stem, hour)
    if hour not in sources.by_hour:
        return [], set()
    union = sources.union(hour)  # second of the hour -> its row
    rows = []
    for second in sorted(union):
        row = union[second]
        try:
            fields = row_fields(row.line)
            rows.append((row.owner, (start + second, float(fields["V"]), float(fields["mA"]), float(fields["W"]))))
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError(f"a row of {stem} at {hour:%Y-%m-%d %H}h cannot be read ({exc}): "
                                 f"{row.line!r}") from None
    return rows, set(sources.by_hour.get(hour, {}))


@dataclass
class InfluxStats:
    uploaded: int = 0  # hours
    points: int = 0
    requests: int = 0
    failed: int = 0  # hours the server refused (their points are in failed/)
    retries: int = 0
    last_upload: Optional[dt.datetime] = None


class Counted:
    """An iterator that counts what it yields (the points sent)."""

    def __init__(self, items: Iterator[str]) -> None:
        self.items = items
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for item in self.items:
            self.count += 1
            yield item


class InfluxUploader(HourSink):
    """Sends closed hours oldest first, a meter's day per batch of requests; a refused hour never
    blocks the ones after it."""

    label = "InfluxDB upload"

    def __init__(self, data_dir: Path, target: InfluxTarget, clock: Clock, *,
                 devices: Dict[str, str], names: Dict[str, str], max_backoff: float = 3600.0,
                 batch_points: int = MAX_POINTS) -> None:
        self.data_dir = data_dir
        self.target = target
        self.clock = clock
        self.devices = devices  # file suffix -> the device tag (identity.device_values)
        self.names = names  # file suffix -> the meter's configured name
        self.ledger = Ledger(data_dir, name=LEDGER_NAME)
        self.backoff = Backoff(1.0, max_backoff)
        self.max_backoff = max_backoff
        self.batch_points = batch_points
        self.stats = InfluxStats()
        self._queued: Dict[str, HourFile] = {}
        self._refused: Set[str] = set()  # hours the server refused in this run: retried at the next start
        self._single: Set[str] = set()  # hours of a refused day: sent one by one, so only the bad one fails
        self._next_try = 0.0
        self.outage = Outage(clock, self.label, "InfluxDB")

    # --- one batch -----------------------------------------------------------------------

    def upload_group(self, group: Sequence[HourFile]) -> Dict[str, str]:
        """Send the hours of ``group`` (one meter, one day) not yet sent; each hour's outcome:
        "uploaded", "skipped", "failed" or "retry"."""
        outcomes = {h.key: "skipped" for h in group if h.key in self.ledger}
        fresh = [h for h in group if h.key not in self.ledger]
        if fresh and fresh[0].key in self._single:
            fresh = fresh[:1]
        elif fresh:
            fresh = [h for h in fresh if h.key not in self._single]
        if not fresh:
            return outcomes
        counted: Dict[str, int] = {}
        points = Counted(self._points(fresh, counted, outcomes))
        try:
            for body in chunks(points, self.batch_points):
                self.target.write(body)
                self.stats.requests += 1
        except PermanentError as exc:
            return {**outcomes, **self._rejected(fresh, exc)}
        except TransientError as exc:
            self._waiting(exc, fresh[0].key)
            return {**outcomes, **{h.key: "retry" for h in fresh if h.key not in outcomes}}
        sent = [h for h in fresh if h.key in counted]
        if sent:
            self._credit(sent, counted, points.count)
        return {**outcomes, **{h.key: "uploaded" for h in sent}}

    def _points(self, hours: Sequence[HourFile], counted: Dict[str, int], outcomes: Dict[str, str]) -> Iterator[str]:
        """The hours' points in order, with one hour's rows in memory at a time (4.5 MB at the peak;
        a day's points at once: 18 MB, benchmarks/upload.py); first the row before them again, its step
        to their first row now known.

        ``counted`` gets each unit's rows (the seconds its part owns) as its hour is read; a unit
        without a readable file is refused on the way.
        """
        first = hours[0]
        suffix = first.meter_suffix
        series = series_key(self.target.config.measurement, self.devices.get(suffix) or suffix or "wattchecker",
                            self.names.get(suffix) or suffix or "wattchecker")
        before = self._neighbour(first, -1)
        waiting: Optional[Row] = before[-1] if before else None  # its line needs the next row's stamp
        read_any = False
        for hour, units in itertools.groupby(hours, key=lambda h: h.hour):
            units = list(units)
            try:
                union, readable = hour_union(self.data_dir, first.stem, hour)
            except PermanentError as exc:
                union, readable = [], set()
                problem = str(exc)
            else:
                problem = "no file of it can be read (the damaged ones are in failed/)"
            for unit in units:
                if unit.part in readable:
                    counted[unit.key] = sum(1 for owner, _ in union if owner == unit.part)
                else:
                    self._refuse(unit, f"unreadable: {problem}", None)
                    outcomes[unit.key] = "failed"
            ordered = [row for _, row in union] if readable else []
            if not ordered:
                continue
            if waiting is not None:
                yield from point_lines(series, [waiting], ordered[0][0])
            yield from point_lines(series, ordered[:-1], ordered[-1][0])
            waiting, read_any = ordered[-1], True
        if read_any:
            after = self._neighbour(hours[-1], +1)
            yield from point_lines(series, [waiting], after[0][0] if after else None)

    def _neighbour(self, hour_file: HourFile, direction: int) -> List[Row]:
        """The rows of the hour next to ``hour_file`` (``direction`` -1 before, +1 after), if on disk."""
        try:
            union, _ = hour_union(self.data_dir, hour_file.stem, hour_file.hour + dt.timedelta(hours=direction))
        except PermanentError:
            return []
        return [row for _, row in union]

    def _credit(self, hours: Sequence[HourFile], rows: Dict[str, int], points: int) -> None:
        at = self.clock.now().strftime("%Y-%m-%d %H:%M:%S")
        entries = {h.key: {"rows": rows[h.key], "at": at, "url": self.target.config.url} for h in hours}
        self.ledger.commit(f"influx {hours[0].key} {len(hours)}h", entries)
        self.stats.uploaded += len(hours)
        self.stats.points += points
        self.stats.last_upload = self.clock.now()
        span = hours[0].key if len(hours) == 1 else f"{hours[0].key} .. {hours[-1].key} ({len(hours)} hours)"
        log.info("uploaded %s: %d points to InfluxDB %s", span, points, self.target.where)
        for hour_file in hours:
            self._queued.pop(hour_file.key, None)
            self._single.discard(hour_file.key)
        self._healed()

    def _rejected(self, hours: Sequence[HourFile], exc: PermanentError) -> Dict[str, str]:
        """The server refused a batch: its hours one by one, or the one hour's points to failed/."""
        if len(hours) > 1:
            self._single.update(h.key for h in hours)
            log.info("%s; sending the hours of %s one by one", exc, hours[0].key)
            return {}
        self._refuse(hours[0], str(exc), list(self._points(hours, {}, {})))
        return {hours[0].key: "failed"}

    def _refuse(self, hour_file: HourFile, reason: str, lines: Optional[List[str]]) -> None:
        """One warning quoting the server; the points into failed/. The hour files stay (other sinks,
        the report) and the hour is tried again at the next start."""
        failed = self.data_dir / FAILED_DIR
        failed.mkdir(exist_ok=True)
        stem = failed / f"{hour_file.key}.influxdb"
        if lines:
            stem.with_name(stem.name + ".lp").write_text("\n".join(lines) + "\n", encoding="utf-8")
        stem.with_name(stem.name + ".reason").write_text(reason + "\n", encoding="utf-8")
        self._refused.add(hour_file.key)
        self._queued.pop(hour_file.key, None)
        self._single.discard(hour_file.key)
        self.stats.failed += 1
        log.warning("InfluxDB: %s not sent: %s; %sit is tried again at the next start", hour_file.key, reason,
                    f"its points are in {stem}.lp, " if lines else "")

    # --- errors --------------------------------------------------------------------------

    def _waiting(self, exc: TransientError, key: str) -> None:
        """Log once per outage (once more if access is denied in it); count every retry; wait as asked."""
        self.stats.retries += 1
        self.outage.waiting(exc, key, f"{exc}; hours stay queued and are retried with backoff")
        delay = exc.retry_after if isinstance(exc, RetryLater) and exc.retry_after is not None else None
        self._next_try = self.clock.monotonic() + (min(delay, self.max_backoff) if delay is not None
                                                   else self.backoff.next_delay())

    def _healed(self) -> None:
        self.outage.over()
        self.backoff.reset()

    # --- the thread ----------------------------------------------------------------------

    def step(self) -> bool:
        """Send the oldest queued day if its time has come; True if there is more to do now."""
        if not self._queued or self.clock.monotonic() < self._next_try:
            return False
        self.ledger.reload()
        for key in [k for k in self._queued if k in self.ledger or k in self._refused]:
            del self._queued[key]
        if not self._queued:
            return False
        outcomes = self.upload_group(day_groups(list(self._queued.values()))[0])
        if "retry" in outcomes.values():
            return False
        for key in outcomes:
            self._queued.pop(key, None)
        return bool(self._queued)

    def close(self) -> None:
        self.target.close()


class LivePoints:
    """At most one write a second of each meter's newest reading, for a dashboard that looks live.

    An RS-BTWATTCH2's points also carry ``relay`` and ``relay_latched`` (1 or 0).
    The same points the hour's upload later writes (same tags and second), so
    nothing is doubled; a point lost in an outage is written then too. Errors
    are logged once per outage and never retried here.
    """

    def __init__(self, live, target: InfluxTarget, clock: Clock, devices: Dict[str, str]) -> None:
        self.live = live
        self.target = target
        self.clock = clock
        self.devices = devices  # meter name -> the device tag
        self.sent: Dict[str, int] = {}  # meter -> the stamp last written
        self.written = 0
        self._quiet_until = 0.0
        self._failing = False

    def lines(self) -> List[str]:
        """Points for the readings newer than those written."""
        from ..clock import utc_epoch

        lines = []
        for name, state in sorted(self.live.snapshot().items()):
            m = state.measurement
            if m is None or utc_epoch(m.time) <= self.sent.get(name, -1):
                continue
            t = utc_epoch(m.time)
            series = series_key(self.target.config.measurement, self.devices.get(name, name), name)
            line = point_lines(series, [(t, m.volts, m.milliamps, m.watts)], energy=False)[0]
            relay = "".join(f",{key}={int(value)}i" for key, value in (("relay", state.relay),
                                                                      ("relay_latched", state.overloaded))
                            if value is not None)  # an RS-BTWATTCH2's: only here, the files do not hold them
            head, stamp = line.rsplit(" ", 1)
            lines.append(f"{head}{relay} {stamp}")
            self.sent[name] = t
        return lines

    def write_once(self) -> None:
        if self.clock.monotonic() < self._quiet_until:
            return
        lines = self.lines()
        if not lines:
            return
        try:
            self.target.write(("\n".join(lines) + "\n").encode("utf-8"))
        except (TransientError, PermanentError) as exc:
            if not self._failing:
                log.warning("InfluxDB live points not written: %s; the hour's upload writes them later", exc)
            self._failing = True
            if isinstance(exc, RetryLater):
                self._quiet_until = self.clock.monotonic() + (exc.retry_after or 1.0)
            return
        self.written += len(lines)
        self._failing = False

    def run(self, stop: threading.Event) -> None:
        while not self.clock.sleep(1.0, stop):
            self.write_once()
        self.target.close()
