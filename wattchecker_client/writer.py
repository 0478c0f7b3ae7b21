"""Rows -> buffered, hourly files, gzipped when the hour closes, and nothing lost on the way.

Each meter has one ``FileSet`` per format: the current hour's plain file
(``wattchecker-data.csv``) and the closed hours (``wattchecker-data.csv.2019-09-07_09.gz``).
A row always lands in the file of the hour of its own timestamp. Closing is
idempotent: a closed file never receives a second it already holds, so a
close interrupted by a crash is simply done again at start-up.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Set, Tuple, TypeVar

from . import fileops
from .clock import Clock, utc_epoch
from .fileops import TMP_SUFFIX, atomic_write  # noqa: F401  (atomic_write: re-exported)
from .datadir import (HOUR_FORMAT, closed_files_in, closed_name, line_stamp, open_text,  # noqa: F401  (re-exported)
                      parse_closed, parse_line, parse_stamp)
from .datadir import (DAMAGE, FAILED_DIR, REASON_SUFFIX, FileRow, HourSummary, append_summaries, file_lines,
                      file_rows, parse_closed_name, quarantine, read_summaries, hour_sources, summarize_files,
                      summary_lines)
from .formats import FORMATTERS
from .protocol import Measurement

log = logging.getLogger(__name__)

T = TypeVar("T")

HOUR = dt.timedelta(hours=1)
# How long a closed hour waits for its other formats before it is announced anyway.
HOLD_LIMIT = 300.0


@dataclass(frozen=True)
class ClosedFile:
    """A finished, gzipped hour (or a late part of one), ready to upload."""

    meter: str
    format: str
    hour: dt.datetime
    path: Path


def hour_of(when: dt.datetime) -> dt.datetime:
    return when.replace(minute=0, second=0, microsecond=0)


def read_lines(path: Path) -> List[str]:
    with open_text(path) as f:
        return f.read().splitlines(keepends=True)


class FileSet:
    """One meter's files in one format."""

    def __init__(self, data_dir: Path, stem: str, fmt: str, meter: str) -> None:
        self.data_dir = data_dir
        self.meter = meter
        self.format = fmt
        self.stem = stem
        self.base = f"{stem}.{fmt}"
        self.current_path = data_dir / self.base
        self.format_row: Callable[[Measurement], str] = FORMATTERS[fmt]
        self.pending: List[Measurement] = []
        self.current_hour: Optional[dt.datetime] = None
        self.last_time: Optional[dt.datetime] = None
        self.recovered = False
        self.rows_written = 0
        # This flush's rows: written now, or left out because this format held their second already.
        self.written: List[Measurement] = []
        self.held_already: List[Measurement] = []
        # Files closed but not yet announced; kept here so that an I/O error
        # later in the same action cannot lose the announcement.
        self.outbox: List[ClosedFile] = []

    # --- names -------------------------------------------------------------

    def closed_path(self, hour: dt.datetime, part: int = 0) -> Path:
        return self.data_dir / closed_name(self.stem, self.format, hour, part)

    def closed_parts(self, hour: dt.datetime) -> List[Path]:
        """The hour's closed files in this format (the .gz, then its late parts), by name and a stat each.

        Not an index of every closed hour: that grew with the years of files
        (about 7 MB of memory a year for two formats), and went stale when
        retention or failed/ took files away. A part number is never used
        twice: a part moved to failed/, or missing in this format only, still
        takes its number.
        """
        return [path for path in (self.closed_path(hour, part) for part in range(self.next_part(hour)))
                if path.exists()]

    def next_part(self, hour: dt.datetime) -> int:
        """The first part number this format has not used for the hour, here or in failed/.

        A number is never used twice: its upload key may be credited already.
        """
        part = 0
        while any((folder / self.closed_path(hour, part).name).exists()
                  for folder in (self.data_dir, self.data_dir / FAILED_DIR)):
            part += 1
        return part

    def summary_stands_alone(self, hour: dt.datetime) -> bool:
        """True when the hour's summary holds seconds no file holds any more: a part every file of which
        is gone (retention deleted the hour, or damage took them). Rows joining it now could not be
        integrated with those exactly.

        Asked of any hour but the current one before rows are written to it:
        once an hour, and for late rows. The hour's files are read (and a
        damaged one quarantined) only when it has a summary.
        """
        summary = read_summaries(self.data_dir, self.stem, since=hour).get(hour)
        if summary is None:
            return False
        sources = hour_sources(self.data_dir, self.stem, hour)
        if hour in sources.by_hour:
            sources.union(hour)  # a damaged file is quarantined here, before anything joins its hour
        return bool(set(summary.parts) - set(sources.by_hour.get(hour, {})))

    def parse_closed_name(self, name: str) -> Optional[Tuple[dt.datetime, int]]:
        """(hour, part) if ``name`` is one of this set's closed files."""
        parsed = parse_closed_name(name)
        if parsed is None or f"{parsed[0]}.{parsed[1]}" != self.base:
            return None
        return parsed[2], parsed[3]

    # --- start-up ------------------------------------------------------------

    def recover(self) -> None:
        """Remove stale temporaries, index closed hours, and adopt or close the plain file.

        Until this has succeeded, nothing is appended to the plain file: it
        may end in a torn line. Safe to repeat after an I/O error.
        """
        newest: Optional[dt.datetime] = None
        with os.scandir(self.data_dir) as entries:
            for entry in entries:
                if entry.name.startswith(self.base + ".") and entry.name.endswith(TMP_SUFFIX):
                    log.warning("removing %s, left by an interrupted compression", entry.path)
                    fileops.unlink(Path(entry.path), missing_ok=True)
                parsed = self.parse_closed_name(entry.name)
                if parsed and (newest is None or parsed[0] > newest):
                    newest = parsed[0]
        if newest is not None:
            # every row of the newest hour, not its files' last lines: files of older releases are not sorted
            self.last_time = max((t for t in map(_newest_second, self.closed_parts(newest)) if t), default=None)
        self._summarized_since()
        if not self.current_path.exists():
            self.recovered = True
            return
        lines = self._read_current()
        hours = sorted({hour_of(parse_stamp(s)) for s in map(line_stamp, lines) if s})
        if lines:
            self.last_time = max(self.last_time or dt.datetime.min, max(parse_stamp(line_stamp(l)) for l in lines))
        if len(hours) == 1 and not self.closed_parts(hours[0]):
            self.current_hour = hours[0]
            log.info("%s: continuing hour %s (%d rows)", self.current_path, hours[0].strftime(HOUR_FORMAT), len(lines))
        else:
            self._close_plain(lines)
        self.recovered = True

    def _summarized_since(self) -> None:
        """The newest second the summaries hold, where no file holds it any more (damaged, or deleted).

        The folder's newest second is its files' or its summaries': the energy
        restore counts up to it, and a row not after it is late. Lines older
        than the newest file's hour are passed over unparsed.
        """
        since = hour_of(self.last_time) if self.last_time else None
        newest: Optional[HourSummary] = None  # the newest hour's latest line: no other hour can hold a later second
        for summary in summary_lines(self.data_dir, self.stem, since):  # one at a time: not a year of them at once
            if newest is None or summary.hour >= newest.hour:
                newest = summary
        if newest is not None:
            last = newest.hour + dt.timedelta(seconds=newest.last[0])
            if self.last_time is None or last > self.last_time:
                self.last_time = last

    def _read_current(self) -> List[str]:
        """The plain file's rows; a torn last line (a crash mid-write) is cut off."""
        lines = read_lines(self.current_path)
        good = [l for l in lines if l.endswith("\n") and line_stamp(l)]
        if len(good) != len(lines):
            log.warning("%s: dropping %d torn or unreadable line(s)", self.current_path, len(lines) - len(good))
            atomic_write(self.current_path, "".join(good).encode(), compress=False)
        return good

    # --- writing ---------------------------------------------------------------

    def flush(self) -> None:
        """Write pending rows into their hours' files; on an I/O error keep the rest pending."""
        if not self.recovered:
            self.recover()
        by_hour: Dict[dt.datetime, List[Measurement]] = {}
        for m in self.pending:  # one pass: a week of buffered rows must not cost hours x rows
            by_hour.setdefault(hour_of(m.time), []).append(m)
        written: Set[dt.datetime] = set()
        try:
            for hour in sorted(by_hour):
                self._write_hour(hour, sorted(by_hour[hour], key=lambda m: m.time))  # a set-back meter's, in time order
                written.add(hour)
        finally:
            if written:
                self.pending = [m for m in self.pending if hour_of(m.time) not in written]

    def _write_hour(self, hour: dt.datetime, rows: List[Measurement]) -> None:
        if hour != self.current_hour and self.summary_stands_alone(hour):
            self._set_aside(hour, rows)
            return
        if self.current_hour is None and not self.closed_parts(hour):
            self.current_hour = hour
        if self.current_hour is not None and hour > self.current_hour:
            self.close_current()
            self.current_hour = hour
        if hour == self.current_hour:
            new = self._not_written(rows)
            if new:
                self._append(new)
            self._done(rows, new)
        else:
            log.info("%s: %d late row(s) for closed hour %s", self.base, len(rows), hour.strftime(HOUR_FORMAT))
            self._done(rows, self._write_closed(hour, rows))

    def _done(self, rows: List[Measurement], new: List[Measurement]) -> None:
        """Note which rows reached this format now and which it held already (for the energy counter)."""
        self.rows_written += len(new)
        self.written += new
        if len(new) < len(rows):
            seconds = {m.time for m in new}
            self.held_already += [m for m in rows if m.time not in seconds]

    def _set_aside(self, hour: dt.datetime, rows: List[Measurement]) -> None:
        """Rows for an hour whose summary stands alone (``summary_stands_alone``) go to failed/, kept but
        counted nowhere.

        The hour's summary stands for its deleted rows; rows joining it now could
        not be integrated with them exactly, so they wait there for a person.
        """
        failed = self.data_dir / FAILED_DIR
        failed.mkdir(exist_ok=True)
        path = failed / self.closed_path(hour, self.next_part(hour)).name
        atomic_write(path, "".join(self.format_row(m) + "\n" for m in rows).encode("utf-8"), compress=True)
        atomic_write(path.with_name(path.name + REASON_SUFFIX),
                     f"rows for hour {hour.strftime(HOUR_FORMAT)}, whose files are gone (retention, or damage); "
                     "its summary stands for it\n".encode(), compress=False)
        log.warning("%s: %d row(s) for hour %s, whose files are gone and whose summary stands for it: kept in %s, "
                    "counted nowhere",
                    self.base, len(rows), hour.strftime(HOUR_FORMAT), path)

    def _not_written(self, rows: List[Measurement]) -> List[Measurement]:
        """The rows whose second the current file does not hold yet, each once.

        A meter clock set back repeats seconds (docs/clock.md); no second is
        ever written twice. The file is read only when a row is not later than
        every second already written, which a steady meter never causes.
        """
        last = self.last_time
        if all(a.time < b.time for a, b in zip(rows, rows[1:])) and (last is None or rows[0].time > last):
            self.last_time = rows[-1].time
            return rows
        held = {parse_stamp(line_stamp(l)) for l in self._read_current()} if self.current_path.exists() else set()
        new = []
        for m in rows:
            if m.time not in held:
                held.add(m.time)
                new.append(m)
        if new:
            self.last_time = max(last or new[0].time, max(m.time for m in new))
        if len(new) < len(rows):
            log.info("%s: %d row(s) for seconds already written left out", self.base, len(rows) - len(new))
        return new

    def _append(self, rows: Sequence[Measurement]) -> None:
        """Append whole rows or nothing (``fileops.append``), fsynced."""
        fileops.append(self.current_path, "".join(self.format_row(m) + "\n" for m in rows).encode("utf-8"))

    def close_current(self) -> None:
        """Compress the current hour's plain file and remove it."""
        if self.current_path.exists():
            self._close_plain(self._read_current())
        self.current_hour = None

    def _close_plain(self, lines: List[str]) -> None:
        by_hour: Dict[str, List[str]] = {}
        for line in lines:
            by_hour.setdefault(line_stamp(line)[:13], []).append(line)  # "YYYY-MM-DD HH"
        for hour in sorted(by_hour):
            self._close_lines(parse_stamp(hour + ":00:00"), by_hour[hour])
        fileops.unlink(self.current_path)
        fileops.sync_dir(self.data_dir)

    def _closed_stamps(self, hour: dt.datetime) -> Set[str]:
        """The stamps the hour's closed files in this format hold (a damaged one is quarantined)."""
        held: Set[str] = set()
        for path in self.closed_parts(hour):
            held.update(line_stamp(row.line) for row in _rows_or_none(path))
        return held

    def _close_lines(self, hour: dt.datetime, lines: List[str]) -> None:
        """The plain file's lines of one hour into its closed file, less the seconds already closed.

        Idempotent: a close a crash interrupted after the rename is done again
        at start-up and writes nothing twice.
        """
        held = self._closed_stamps(hour)
        new = [line for line in lines if line_stamp(line) not in held]
        if new:
            self._write_part(hour, new)

    def _write_closed(self, hour: dt.datetime, rows: List[Measurement]) -> List[Measurement]:
        """Write the rows whose seconds the hour's closed files in this format do not hold yet, as a new part."""
        held = self._closed_stamps(hour)
        new, lines = [], []
        for m in rows:
            line = self.format_row(m) + "\n"
            stamp = line_stamp(line)
            if stamp not in held:
                held.add(stamp)
                new.append(m)
                lines.append(line)
        if new:
            self._write_part(hour, lines)
        return new

    def _write_part(self, hour: dt.datetime, lines: List[str]) -> None:
        path = self.closed_path(hour, self.next_part(hour))  # a number never used before, in any format
        lines = sorted(lines, key=line_stamp)  # in time order, whatever order a set-back meter gave them
        atomic_write(path, "".join(lines).encode("utf-8"), compress=True)
        log.info("closed %s (%d rows)", path.name, len(lines))
        self.outbox.append(ClosedFile(self.meter, self.format, hour, path))

    def close_if_stale(self, now: dt.datetime, grace: float) -> None:
        """Close the current hour once the host clock is past its end by ``grace`` seconds."""
        if self._is_stale(now, grace):
            self.flush()  # its buffered rows go in first
            if self._is_stale(now, grace):
                self.close_current()

    def _is_stale(self, now: dt.datetime, grace: float) -> bool:
        return self.current_hour is not None and now >= self.current_hour + HOUR + dt.timedelta(seconds=grace)

    def take_closed(self) -> List[ClosedFile]:
        closed, self.outbox = self.outbox, []
        return closed


def _newest_second(path: Path) -> Optional[dt.datetime]:
    """The newest second a closed file's rows hold, read row by row (an hour's rows are never held at once);
    None for a file without one (``_unless_damaged``)."""
    def newest() -> Optional[dt.datetime]:
        stamps = (line_stamp(row.line) for row in file_rows(path))
        return max((parse_stamp(s) for s in stamps if s), default=None)

    return _unless_damaged(path, newest, None)


def _rows_or_none(path: Path) -> List[FileRow]:
    """A closed file's rows; none for a damaged or vanished one (``_unless_damaged``)."""
    return _unless_damaged(path, lambda: file_lines(path), [])


def _unless_damaged(path: Path, read: Callable[[], T], empty: T) -> T:
    """``read()`` of a closed file; ``empty`` if it vanished, or if it is damaged: then it is quarantined,
    and the rows read before the damage count for nothing too."""
    try:
        return read()
    except FileNotFoundError:
        return empty
    except DAMAGE as exc:
        quarantine(path, f"{type(exc).__name__}: {exc}")
        return empty


class DurableListener(Protocol):
    """Told what reaches the disk: the energy counter counts exactly these rows."""

    def late_rows_coming(self, meter: str) -> None:
        """A flush is about to write rows not later than the newest second on disk."""

    def durable(self, meter: str, rows: List[Tuple[int, float]], complete: bool) -> None:
        """After a flush: its rows no format held before, as (UTC epoch second, W as the union reads it);
        ``complete``: nothing is left pending."""


@dataclass
class WriterStats:
    rows_received: int = 0
    write_errors: int = 0
    rows_dropped: int = 0
    files_closed: int = 0


class Writer:
    """Buffers rows, flushes them every ``buffer_seconds``, closes hours, announces closed files."""

    def __init__(
        self,
        data_dir: Path,
        stems: Dict[str, str],
        formats: Sequence[str],
        clock: Clock,
        *,
        buffer_seconds: float = 180.0,
        grace: float = 120.0,
        max_buffered_rows: int = 604_800,
        closed_files: Optional["queue.Queue[ClosedFile]"] = None,
    ) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self.buffer_seconds = buffer_seconds
        self.grace = grace
        self.max_buffered_rows = max_buffered_rows
        self.closed_files = closed_files
        self.stats = WriterStats()
        # JSON first: it is what the folder's union reads for a second both formats hold, so a crash
        # between the two appends leaves the winning values on disk.
        order = sorted(formats, key=lambda fmt: fmt != "json")
        self.sets: Dict[str, List[FileSet]] = {
            meter: [FileSet(data_dir, stem, fmt, meter) for fmt in order] for meter, stem in stems.items()
        }
        self.stems = dict(stems)
        self.listener: Optional[DurableListener] = None  # the energy counter (live.LiveState)
        self._next_flush = clock.monotonic() + buffer_seconds
        self._failing = False
        # Set to have the writer take its rows now: at stop, or when rows pile up.
        self.wake = threading.Event()
        # (meter, hour, part) -> (first closed at, {format: ClosedFile}): not announced yet
        self._held: Dict[Tuple[str, dt.datetime, int], Tuple[float, Dict[str, ClosedFile]]] = {}

    def all_sets(self) -> Iterable[FileSet]:
        for sets in self.sets.values():
            yield from sets

    def recover(self) -> None:
        """Recover every file set; one that fails (disk full, ...) is retried at each flush."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for fs in self.all_sets():
            self._guarded(fs, fs.recover)

    def last_time(self, meter: str) -> Optional[dt.datetime]:
        """The newest second already on disk for ``meter``."""
        times = [fs.last_time for fs in self.sets[meter] if fs.last_time]
        return max(times) if times else None

    def add(self, meter: str, measurement: Measurement) -> None:
        self.stats.rows_received += 1
        for fs in self.sets[meter]:
            fs.pending.append(measurement)
            if len(fs.pending) > self.max_buffered_rows:
                dropped = len(fs.pending) - self.max_buffered_rows
                del fs.pending[:dropped]
                self.stats.rows_dropped += dropped
                log.error("%s: buffer full (%d rows): dropped the oldest %d row(s)", fs.base, self.max_buffered_rows, dropped)

    def tick(self) -> None:
        """Flush when due; close hours the host clock has left behind."""
        now = self.clock.now()
        if self.clock.monotonic() >= self._next_flush or any(fs._is_stale(now, self.grace) for fs in self.all_sets()):
            self.flush()  # a stale hour's buffered rows go in first, told to the energy counter as any flush's
        for fs in self.all_sets():
            self._guarded(fs, lambda fs=fs: fs.close_if_stale(now, self.grace))

    def flush(self) -> None:
        self._next_flush = self.clock.monotonic() + self.buffer_seconds
        ok = True
        for meter, sets in self.sets.items():
            newest = self.last_time(meter)
            if self.listener is not None and newest is not None and any(
                    m.time <= newest for fs in sets for m in fs.pending):
                self.listener.late_rows_coming(meter)  # before they reach the disk: a crash must not hide them
            meter_ok = all([self._guarded(fs, fs.flush) for fs in sets])
            self._tell_durable(meter, sets, meter_ok)
            ok = ok and meter_ok
        if ok and self._failing:
            log.warning("writing works again; every buffered row is on disk")
        self._failing = not ok

    def _tell_durable(self, meter: str, sets: List[FileSet], complete: bool) -> None:
        """The rows this flush made new to the folder: written in some format, held before in none."""
        written: Dict[dt.datetime, float] = {}
        held: Set[dt.datetime] = set()
        for fs in sets:
            for m in fs.written:  # JSON first: its full-precision W is what the union reads
                written.setdefault(m.time, m.watts if fs.format == "json" else float(f"{m.watts:.2f}"))
            held.update(m.time for m in fs.held_already)
            fs.written, fs.held_already = [], []
        rows = sorted((utc_epoch(t), watts) for t, watts in written.items() if t not in held)
        if self.listener is not None and (rows or complete):
            self.listener.durable(meter, rows, complete)

    def _guarded(self, fs: FileSet, action: Callable[[], None]) -> bool:
        """Run a file action; an I/O error is logged once per outage and retried later."""
        try:
            action()
            return True
        except OSError as exc:
            self.stats.write_errors += 1
            if not self._failing:
                log.error("%s: cannot write (%s); keeping %d row(s) in memory and retrying",
                          fs.current_path, exc.strerror or exc, len(fs.pending))
            self._failing = True
            return False
        finally:
            self._announce(fs.take_closed())

    def _announce(self, closed: List[ClosedFile]) -> None:
        """Announce an hour once every format of its meter has closed it.

        The uploader takes an hour as soon as it hears of it, and must find the
        JSON file (full precision) beside the CSV. A format that never closes
        that hour (formats that diverged in a crash) is waited for HOLD_LIMIT
        seconds, longer while writing fails.
        """
        self.stats.files_closed += len(closed)
        now = self.clock.monotonic()
        for item in closed:
            _, _, hour, part = parse_closed(item.path)
            self._held.setdefault((item.meter, hour, part), (now, {}))[1][item.format] = item
        for key, (since, files) in list(self._held.items()):
            complete = len(files) == len(self.sets[key[0]])
            if complete or (not self._failing and now - since >= HOLD_LIMIT):
                del self._held[key]
                self._summarize(key[0], key[1])
                for item in files.values():
                    if self.closed_files is not None:
                        self.closed_files.put(item)

    def _summarize(self, meter: str, hour: dt.datetime) -> None:
        """The hour's summary once it is closed in every format, from the union of its files (a
        late part's hour again, whole): the report, the page and the energy restore need not read it."""
        stem = self.stems[meter]
        sources = hour_sources(self.data_dir, stem, hour)
        summary = summarize_files(sources, hour) if hour in sources.by_hour else None
        if summary is not None:
            append_summaries(self.data_dir, stem, [summary])

    def pending_rows(self) -> int:
        return max((len(fs.pending) for fs in self.all_sets()), default=0)

    def run(self, rows: "queue.Queue", stop: threading.Event, heartbeat: Callable[[], None],
            heartbeat_interval: float = 60.0) -> None:
        """The writer thread: take rows until ``stop``, then flush everything.

        Rows wait in ``rows`` until a flush or an hour close is due: the writer
        sleeps until then (a sign of life at least every ``heartbeat_interval``),
        not woken by each row, since nothing is written before a flush anyway.
        Whoever sets ``stop``, or sees many rows waiting, sets ``wake`` too.
        """
        while True:
            heartbeat()
            self.wake.clear()  # a wake from here on is for rows not taken yet
            self._take(rows)
            self.tick()
            if stop.is_set():
                break
            self.clock.sleep(self._idle_wait(heartbeat_interval), self.wake)
        self._take(rows)
        self.flush()
        if self.pending_rows():
            log.error("exiting with %d row(s) that could not be written (see the errors above)",
                      self.pending_rows())

    def _take(self, rows: "queue.Queue") -> None:
        """Every row waiting in ``rows``."""
        while True:
            try:
                meter, measurement = rows.get_nowait()
            except queue.Empty:
                return
            self.add(meter, measurement)

    def _idle_wait(self, longest: float) -> float:
        """Seconds until a flush, an hour close or a held announcement is due, at most ``longest``.

        A close already past due has failed (a full disk, ...): it is retried
        at each tick, not in a busy loop.
        """
        mono = self.clock.monotonic()
        wait = min([longest, self._next_flush - mono] + [since + HOLD_LIMIT - mono for since, _ in self._held.values()])
        now = self.clock.now()
        for fs in self.all_sets():
            if fs.current_hour is not None:
                due = (fs.current_hour + HOUR - now).total_seconds() + self.grace
                if due > 0:
                    wait = min(wait, due)
        return max(0.0, wait)

    def counts(self) -> Counter:
        return Counter({f"{fs.meter}/{fs.format}": fs.rows_written for fs in self.all_sets()})
