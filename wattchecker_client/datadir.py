"""The data folder's contract: the hour files' names, their rows, the integration rule, hourly summaries.

The writer, the uploader, the report, the page and the energy restore all
read the folder through this module; none of them spells a file name itself.

The raw hour files stay the one source of truth. A summary is a cache
derived from one closed UTC hour of one meter, so that a year of history
costs what a day does: the report, the energy restore and the page read
summaries and open raw files only for hours without one (the current hour,
a late ``.partN``, a summary file lost or never written).

A summary keeps, per 15-minute bucket of its UTC hour (every zone offset is
a multiple of 15 minutes, so a bucket lies in one local day and hour), the
watt-seconds, seconds held, peak W and rows of its rows but the last, and
the first and last row. The last row's hold depends on the next hour's first
row, so joining hours applies the one step rule (``held_seconds``) exactly as
a pass over every row does.

Summaries are one JSON line per hour in ``<stem>.summaries.jsonl``, appended
and never rewritten; a later line for the same hour replaces an earlier one
(its hour got a late part). Retention deletes raw hours, never this file.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

log = logging.getLogger(__name__)
FILE_MODE = 0o640  # readings show when someone is home: the service's group may read them, others not


def private_file(path: str, flags: int) -> int:
    """An ``opener`` for open(): a file it creates gets FILE_MODE whatever the umask allows beyond it."""
    return os.open(path, flags, FILE_MODE)


MAX_STEP = 5  # seconds
BUCKET_SECONDS = 900  # the largest step every time-zone offset is a multiple of
BUCKETS = 3600 // BUCKET_SECONDS
SUMMARY_SUFFIX = ".summaries.jsonl"
LINE_START = '{"hour":"'  # how every summary line begins (HourSummary.to_line): its hour follows
HOUR_FORMAT = "%Y-%m-%d_%H"  # in the hour files' names, as TimedRotatingFileHandler names them
STAMP_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
CURRENT_PART = 10_000  # the plain current file sorts after any closed part of its hour

Row = Tuple[int, float]  # (second within its hour, W)


def closed_name(stem: str, fmt: str, hour: dt.datetime, part: int = 0) -> str:
    """``wattchecker-data.csv.2019-09-07_09.gz`` (``.partN`` before ``.gz`` for a late part)."""
    suffix = f".part{part}" if part else ""
    return f"{stem}.{fmt}.{hour.strftime(HOUR_FORMAT)}{suffix}.gz"


def held_seconds(step: Optional[int]) -> int:
    """Seconds a row counts for when the next row comes ``step`` seconds later (None: none yet).

    The one integration rule: the report, the BigQuery view and the live
    energy counter (live.py) all use it, so their kWh agree to the row.
    A repeated second (step 0) counts once, through the later row.
    """
    if step is None:
        return 1
    if step <= 0:
        return 0
    return step if step <= MAX_STEP else 1


class Bucket(NamedTuple):
    """A quarter hour of rows, the last row of the hour left out (its hold is the next hour's).

    Named tuples, not dataclasses: a year of summaries is 35,000 of these in memory while
    the energy is counted from them, at a third of a dataclass's size.
    """

    watt_seconds: float = 0.0
    seconds: int = 0
    peak_watts: float = 0.0  # of the rows that held for a second or more, as the report's peak
    rows: int = 0


class HourSummary(NamedTuple):
    """One closed UTC hour of one meter, enough to integrate it without its rows."""

    hour: dt.datetime  # UTC, naive
    parts: Tuple[int, ...]  # the closed files' parts it was made from: a new part makes it stale
    first: Row
    last: Row
    rows: int
    gaps: int  # steps longer than MAX_STEP inside the hour
    buckets: Tuple[Bucket, ...]
    volts: Optional[Tuple[float, float]] = None  # the hour's lowest and highest V (None in older lines)

    @property
    def watt_seconds(self) -> float:
        """The hour's energy, its last row's hold left to whatever follows."""
        return sum(b.watt_seconds for b in self.buckets)

    def to_line(self) -> str:
        return json.dumps({
            "hour": self.hour.strftime(HOUR_FORMAT), "parts": list(self.parts),
            "first": list(self.first), "last": list(self.last), "rows": self.rows, "gaps": self.gaps,
            "buckets": [[b.watt_seconds, b.seconds, b.peak_watts, b.rows] for b in self.buckets],
            **({"volts": list(self.volts)} if self.volts else {}),
        }, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, line: str) -> "HourSummary":
        data = json.loads(line)
        buckets = tuple(Bucket(float(ws), int(s), float(p), int(r)) for ws, s, p, r in data["buckets"])
        if len(buckets) != BUCKETS:
            raise ValueError(f"{len(buckets)} buckets, not {BUCKETS}")
        first, last = data["first"], data["last"]
        volts = data.get("volts")
        return cls(dt.datetime.strptime(data["hour"], HOUR_FORMAT), tuple(int(p) for p in data["parts"]),
                   (int(first[0]), float(first[1])), (int(last[0]), float(last[1])), int(data["rows"]),
                   int(data["gaps"]), buckets, (float(volts[0]), float(volts[1])) if volts else None)


# --- names --------------------------------------------------------------------------


CLOSED_RE = re.compile(
    r"^(?P<stem>.+)\.(?P<fmt>csv|json)\.(?P<hour>\d{4}-\d\d-\d\d_\d\d)(?:\.part(?P<part>\d+))?\.gz$"
)


def parse_closed(path: Path) -> Optional[Tuple[str, str, dt.datetime, int]]:
    """(stem, format, hour, part) of a closed file's name, or None for any other file."""
    match = CLOSED_RE.match(path.name)
    if not match:
        return None
    hour = dt.datetime.strptime(match.group("hour"), HOUR_FORMAT)
    return match.group("stem"), match.group("fmt"), hour, int(match.group("part") or 0)


def closed_files_in(data_dir: Path) -> List[Path]:
    """Every .gz in the data folder (closed hours and late parts, by their names)."""
    try:
        return [Path(e.path) for e in os.scandir(data_dir) if e.is_file() and e.name.endswith(".gz")]
    except FileNotFoundError:
        return []


def open_text(path: Path):
    """A data file for reading as text, gzipped or not."""
    return (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8")


def line_stamp(line: str) -> Optional[str]:
    """The row's own ``YYYY-MM-DD HH:MM:SS``; the same for CSV and JSON lines."""
    match = STAMP_RE.search(line)
    return match.group(0) if match else None


def parse_stamp(stamp: str) -> dt.datetime:
    """``YYYY-MM-DD HH:MM:SS`` -> datetime, by hand: strptime is the slowest part of a close."""
    return dt.datetime(int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]),
                       int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19]))


# --- rows and the files that hold them -------------------------------------------------------------------------


def parse_line(line: str) -> Tuple[int, float]:
    """(second within its hour, W) of a CSV or JSON row, without a full parse: the hot path."""
    if line.startswith("{"):
        second_of_hour = int(line[28:30]) * 60 + int(line[31:33])
        return second_of_hour, float(line.rsplit(":", 1)[1].rstrip("}\n "))
    return int(line[14:16]) * 60 + int(line[17:19]), float(line.rsplit(",", 1)[1])


def hour_of_line(line: str) -> dt.datetime:
    stamp = line[14:27] if line.startswith("{") else line[:13]
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H")


def line_volts(line: str) -> float:
    """V of a CSV or JSON row: the second field of both."""
    field = line.split(",", 2)[1]
    return float(field.split(":", 1)[1] if line.startswith("{") else field)


def read_hour(path: Path, volts: Optional[List[float]] = None) -> List[Tuple[int, float]]:
    """The file's (second, W) rows; each row's V into ``volts`` too when given (for a summary)."""
    with open_text(path) as f:
        if volts is None:
            return [parse_line(line) for line in f if line.strip()]
        lines = [line for line in f if line.strip()]
    volts.extend(line_volts(line) for line in lines)
    return [parse_line(line) for line in lines]


class HourSources:
    """Every file holding rows of one UTC hour of one meter: closed, late parts, current."""

    def __init__(self) -> None:
        self.by_hour: Dict[dt.datetime, Dict[int, Dict[str, Path]]] = {}

    def add(self, hour: dt.datetime, part: int, fmt: str, path: Path) -> None:
        self.by_hour.setdefault(hour, {}).setdefault(part, {})[fmt] = path

    def rows(self, hour: dt.datetime, problems: List[str],
             volts: Optional[List[float]] = None) -> List[Tuple[int, float]]:
        """The hour's rows in time order; an unreadable file falls back to its other format."""
        rows: List[Tuple[int, float]] = []
        for part in sorted(self.by_hour[hour]):
            formats = self.by_hour[hour][part]
            for fmt in ("csv", "json"):  # CSV is smaller and quicker; W to 0.01 is plenty for kWh
                path = formats.get(fmt)
                if path is None:
                    continue
                try:
                    rows += read_hour(path, volts)
                    break
                except (OSError, EOFError, zlib.error, ValueError, IndexError) as exc:
                    problems.append(f"{path.name}: skipped, unreadable ({type(exc).__name__}: {exc})")
        rows.sort()
        return rows


def sources_for(data_dir: Path, stem: str, since: Optional[dt.datetime] = None) -> HourSources:
    """Every hour's files (from the hour ``since`` on, when given), by one listing of the folder.

    ``since`` is compared on the names, so a restart after a year of files
    holds no more than the hours since its last checkpoint.
    """
    sources = HourSources()
    prefix, first_hour = stem + ".", since.strftime(HOUR_FORMAT) if since else ""
    try:
        with os.scandir(data_dir) as entries:
            for entry in entries:
                match = CLOSED_RE.match(entry.name) if entry.name.startswith(prefix) else None
                if match and match.group("stem") == stem and match.group("hour") >= first_hour:
                    sources.add(dt.datetime.strptime(match.group("hour"), HOUR_FORMAT), int(match.group("part") or 0),
                                match.group("fmt"), data_dir / entry.name)
    except FileNotFoundError:
        pass
    add_current(data_dir, stem, sources)
    return sources


def sources_between(data_dir: Path, stem: str, start: int, end: int) -> HourSources:
    """The files of the UTC hours touching [start, end), by their names and a stat each.

    No listing: the page asks for two days, and that must cost the same
    beside five years of files as beside one. Late parts are numbered on
    from 1, so probing stops at the first part missing in both formats.
    """
    sources = HourSources()
    for hour_start in range(start - start % 3600, end, 3600):
        hour = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=hour_start)
        part = 0
        while True:
            found = [(fmt, data_dir / closed_name(stem, fmt, hour, part)) for fmt in ("csv", "json")]
            found = [(fmt, path) for fmt, path in found if path.exists()]
            if not found:
                break
            for fmt, path in found:
                sources.add(hour, part, fmt, path)
            part += 1
    add_current(data_dir, stem, sources)
    return sources


def add_current(data_dir: Path, stem: str, sources: HourSources) -> None:
    """The plain current files, as the hour of their first row (after any closed part of it)."""
    for fmt in ("csv", "json"):
        current = data_dir / f"{stem}.{fmt}"
        try:
            with open(current, encoding="utf-8") as f:
                first = f.readline()
        except FileNotFoundError:
            continue
        if first.strip():
            sources.add(hour_of_line(first), CURRENT_PART, fmt, current)


# --- summaries ------------------------------------------------------------------------


def summarize(hour: dt.datetime, parts: Sequence[int], rows: Sequence[Row],
              volts: Sequence[float] = ()) -> Optional[HourSummary]:
    """The summary of one hour's rows (in time order, as ``HourSources.rows`` gives them); None for none."""
    if not rows:
        return None
    sums = [[0.0, 0, 0.0, 0] for _ in range(BUCKETS)]
    gaps = 0
    for (second, watts), (nxt, _) in zip(rows, rows[1:]):
        bucket = sums[second // BUCKET_SECONDS]
        bucket[3] += 1
        step = nxt - second
        gaps += step > MAX_STEP
        held = held_seconds(step)
        if held:
            bucket[0] += watts * held
            bucket[1] += held
            bucket[2] = max(bucket[2], watts)
    sums[rows[-1][0] // BUCKET_SECONDS][3] += 1
    return HourSummary(hour, tuple(sorted(parts)), rows[0], rows[-1], len(rows), gaps,
                       tuple(Bucket(ws, s, p, r) for ws, s, p, r in sums),
                       (min(volts), max(volts)) if volts else None)


def summaries_path(data_dir: Path, stem: str) -> Path:
    return data_dir / f"{stem}{SUMMARY_SUFFIX}"


def read_summaries(data_dir: Path, stem: str, since: Optional[dt.datetime] = None) -> Dict[dt.datetime, HourSummary]:
    """Every hour's latest summary (from the hour ``since`` on, when given: the older lines are
    passed over by their hour, unparsed); an unreadable line (a torn append) is skipped with a warning."""
    path = summaries_path(data_dir, stem)
    found: Dict[dt.datetime, HourSummary] = {}
    first = since.strftime(HOUR_FORMAT) if since else ""
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if first and line.startswith(LINE_START) and line[len(LINE_START):len(LINE_START) + 13] < first:
                    continue
                try:
                    summary = HourSummary.from_line(line)
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    log.warning("%s line %d: skipped, not a summary (%s)", path, number, exc)
                    continue
                found[summary.hour] = summary
    except FileNotFoundError:
        pass
    return found


def append_summaries(data_dir: Path, stem: str, summaries: List[HourSummary]) -> None:
    """Append in one write; a failure only costs the cache (the hours are read from their files again)."""
    if not summaries:
        return
    path = summaries_path(data_dir, stem)
    try:
        with open(path, "a+b", opener=private_file) as f:
            f.seek(0, os.SEEK_END)
            torn = False
            if f.tell():
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"  # a crash mid-append: start a line of our own
            f.write((b"\n" if torn else b"") + "".join(s.to_line() for s in summaries).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        log.warning("%s: summaries not saved (%s); the report reads those hours' files", path, exc)


def summarize_files(sources: HourSources, hour: dt.datetime) -> Optional[HourSummary]:
    """A closed hour's summary from its files; None for the current hour, an unreadable file or no rows
    (their rows are read each time, and they are tried again later)."""
    parts = tuple(sorted(sources.by_hour[hour]))
    if CURRENT_PART in parts:
        return None
    problems: List[str] = []  # told by whoever reads the hour's rows instead
    volts: List[float] = []
    rows = sources.rows(hour, problems, volts)
    return None if problems else summarize(hour, parts, rows, volts)


def summarize_closed_hours(data_dir: Path, stem: str) -> None:
    """Make and save the summaries still missing (before retention deletes the hours' rows)."""
    hour_summaries(data_dir, stem, sources_for(data_dir, stem))


def hour_summaries(data_dir: Path, stem: str, sources: HourSources, only: Optional[Sequence[dt.datetime]] = None,
                   since: Optional[dt.datetime] = None) -> Dict[dt.datetime, HourSummary]:
    """Every closed hour's summary: saved ones still matching their files, the rest made now and saved.

    Hours whose raw files retention deleted keep their saved summary. An
    hour with the current plain file, or a file that cannot be read, is not
    summarized (its rows are read each time, and it is tried again later).
    ``only``: make none but these hours' (the rest are made another time).
    ``since``: none before this hour (those lines are not even parsed).
    """
    saved = read_summaries(data_dir, stem, since)
    made = []
    for hour in sorted(sources.by_hour if only is None else set(only) & set(sources.by_hour)):
        if hour in saved and saved[hour].parts == tuple(sorted(sources.by_hour[hour])):
            continue
        summary = summarize_files(sources, hour)
        if summary is not None:
            saved[hour] = summary
            made.append(summary)
    append_summaries(data_dir, stem, made)
    return {hour: summary for hour, summary in saved.items()  # none for an hour whose files changed since
            if hour not in sources.by_hour or summary.parts == tuple(sorted(sources.by_hour[hour]))}
