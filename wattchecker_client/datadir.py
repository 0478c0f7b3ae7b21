"""The data folder's contract: the hour files' names, their rows, the union rule, hourly summaries.

The writer, the uploader, the report, the page, retention and the energy
restore all read the folder through this module; none of them spells a file
name or reconciles formats or parts itself.

**The folder is the union of its files.** Each meter-second that any file
holds (either format, any part, closed or the plain current file) counts
exactly once. ``read_union`` is the one reading of an hour: where both
formats hold a second the JSON's full-precision line wins, and the second
belongs to (is uploaded with) the first part that holds it in any format.

**Write order and durability** (``writer.py``). A flush appends each
meter's rows to the JSON file first, then the CSV, each append followed by
an fsync: a row is durable once the first fsync covering it returns, and a
crash between the two formats leaves the winning values on disk. A close
writes the hour's ``.gz`` under a temporary name, fsyncs it, renames it,
fsyncs the folder, then unlinks the plain file and fsyncs the folder again:
a crash anywhere leaves the rows in the plain file, the ``.gz``, or both,
and the union counts them once. The energy counter counts a row only after
the writer has told it durable and new to the folder.

**A closed hour while its formats disagree** (a crash between two appends,
or between two formats' closes) is simply the union of what each holds: the
short format is not repaired, nothing is counted twice, and the hour's
summary is made once every format has closed it.

**Deleting an hour** (retention) takes all its parts and formats together,
and only once every part is in BigQuery (when uploading) and a saved summary
covers all its files; a crash mid-deletion leaves a subset that the summary
still covers. Part numbers are never used twice (a part in ``failed/`` keeps
its number), and rows for an hour retention deleted are kept in ``failed/``
and counted nowhere: they could not be integrated with rows that are gone.

**A damaged file** (a bad gzip, garbage, an empty closed file, a line that
is not a row of its hour) is moved to ``failed/`` beside a ``.reason`` with
one warning by whichever reader meets it first (``quarantine``); the hour is
read from its other files and the service keeps reading.

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
a pass over every row does. It names the files it was read from: a file not
among them (a late part) makes it stale; fewer files (retention, damage)
leave it standing.

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
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from . import fileops
from .clock import utc_epoch
from .fileops import FILE_MODE, private_file  # noqa: F401  (re-exported: the folder's file mode)

log = logging.getLogger(__name__)
MAX_STEP = 5  # seconds
BUCKET_SECONDS = 900  # the largest step every time-zone offset is a multiple of
BUCKETS = 3600 // BUCKET_SECONDS
SUMMARY_SUFFIX = ".summaries.jsonl"
LINE_START = '{"hour":"'  # how every summary line begins (HourSummary.to_line): its hour follows
HOUR_FORMAT = "%Y-%m-%d_%H"  # in the hour files' names, as TimedRotatingFileHandler names them
STAMP_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
CURRENT_PART = 10_000  # the plain current file sorts after any closed part of its hour
FAILED_DIR = "failed"  # damaged files, and hours BigQuery refused, beside a .reason each
REASON_SUFFIX = ".reason"

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
    # The files it was read from (``csv.0``, ``json.1``): a file not among them makes it stale. None in
    # lines of releases before the union rule: those stand only once the hour's files are gone.
    files: Optional[Tuple[str, ...]] = None

    def covers(self, files: Sequence[str]) -> bool:
        """True if it was made from every one of ``files`` (fewer: retention or damage took some since)."""
        if not files:
            return True
        return self.files is not None and set(files) <= set(self.files)

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
            **({"files": list(self.files)} if self.files is not None else {}),
        }, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, line: str) -> "HourSummary":
        data = json.loads(line)
        buckets = tuple(Bucket(float(ws), int(s), float(p), int(r)) for ws, s, p, r in data["buckets"])
        if len(buckets) != BUCKETS:
            raise ValueError(f"{len(buckets)} buckets, not {BUCKETS}")
        first, last = data["first"], data["last"]
        volts, files = data.get("volts"), data.get("files")
        return cls(dt.datetime.strptime(data["hour"], HOUR_FORMAT), tuple(int(p) for p in data["parts"]),
                   (int(first[0]), float(first[1])), (int(last[0]), float(last[1])), int(data["rows"]),
                   int(data["gaps"]), buckets, (float(volts[0]), float(volts[1])) if volts else None,
                   tuple(str(f) for f in files) if files is not None else None)


# --- names --------------------------------------------------------------------------


CLOSED_RE = re.compile(
    r"^(?P<stem>.+)\.(?P<fmt>csv|json)\.(?P<hour>\d{4}-\d\d-\d\d_\d\d)(?:\.part(?P<part>\d+))?\.gz$"
)


def parse_closed(path: Path) -> Optional[Tuple[str, str, dt.datetime, int]]:
    """(stem, format, hour, part) of a closed file's name, or None for any other file."""
    return parse_closed_name(path.name)


def parse_closed_name(name: str) -> Optional[Tuple[str, str, dt.datetime, int]]:
    """``parse_closed`` of a bare name, as a folder listing gives it: no Path made for it. A Path interns
    its name (pathlib), and the interpreter's table of interned strings never shrinks: a Path for each
    name in a year's folder would keep about 1 MB for good."""
    match = CLOSED_RE.match(name)
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


class Damaged(Exception):
    """A data file whose bytes cannot be rows (a bad gzip, garbage, an empty closed file)."""


DAMAGE = (EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError, ValueError, IndexError, Damaged)


class FileRow(NamedTuple):
    second: int  # within its hour
    watts: float
    line: str


def file_lines(path: Path, hour: Optional[str] = None) -> List[FileRow]:
    """Every row of a data file, in file order, each parsed once (the hot path of every reader).

    A closed file is all or nothing: any line that is not a row, or no row at
    all, means damage (``Damaged`` or a gzip/zlib error). The plain current
    file may end in a torn line (a crash mid-append): that line is not a row yet.
    ``hour`` (``YYYY-MM-DD HH``): only that hour's rows (a plain file a crash
    left spanning two hours holds rows of both).
    """
    return list(file_rows(path, hour))


def file_rows(path: Path, hour: Optional[str] = None) -> Iterator[FileRow]:
    """``file_lines``'s rows one at a time, for a reader that keeps none of them (an hour of rows held
    at once is most of 1 MB). Damage is raised where it is met: a closed file's rows are only good once
    the last one is read."""
    closed = path.suffix == ".gz"
    found = False
    with open_text(path) as f:  # line by line: an hour's text is never held whole beside its rows
        for number, line in enumerate(f, 1):
            if not closed and not line.endswith("\n"):
                break  # only the last line can lack its newline
            row = _file_row(line, number, closed, hour)
            if row is not None:
                found = True
                yield row
    if closed and not found:
        raise Damaged("no rows")


def _file_row(line: str, number: int, closed: bool, hour: Optional[str]) -> Optional[FileRow]:
    """One line as a row of ``hour``; None for a line to pass over; Damaged in a closed file."""
    try:
        second, watts = parse_line(line)
        stamp = line[14:27] if line[0] == "{" else line[:13]
        ok = stamp[4] == "-" and stamp[10] == " " and 0 <= second < 3600
    except (ValueError, IndexError):
        ok = False
    if not ok:
        if closed and line.strip():
            raise Damaged(f"line {number} is not a row")
        return None
    if hour is None or stamp == hour:
        return FileRow(second, watts, line)
    if closed:
        raise Damaged(f"line {number} is not of the file's hour")
    return None


def quarantine(path: Path, reason: str) -> None:
    """Move a damaged file to ``failed/`` beside a ``.reason``, with one warning; the rest reads on.

    Every reader calls this, so whoever meets the damage first moves the file
    and the others find it gone. A reader that may not move it (``report`` run
    as another user) says so and skips the file.
    """
    if path.parent.name == FAILED_DIR:  # read from failed/ (``upload`` of a file put back by hand)
        log.warning("%s: damaged (%s), skipped", path, reason)
        return
    failed = path.parent / FAILED_DIR
    target = failed / path.name
    try:
        failed.mkdir(exist_ok=True)
        number = 1
        while target.exists():
            number += 1
            target = failed / f"{path.name}.{number}"
        fileops.rename(path, target)
        fileops.atomic_write(target.with_name(target.name + REASON_SUFFIX), f"damaged: {reason}\n".encode(),
                             compress=False)
    except FileNotFoundError:
        return  # another reader moved it first
    except OSError as exc:
        log.warning("%s: damaged (%s), skipped; cannot move it to %s/ (%s)", path, reason, FAILED_DIR, exc)
        return
    log.warning("%s: damaged (%s): moved to %s; the hour keeps the rows its other files hold", path.name, reason, target)


class UnionRow(NamedTuple):
    """One second of an hour as the folder holds it."""

    owner: int  # the lowest part holding this second: the upload unit it belongs to
    line: str  # the most precise line holding it (JSON over CSV)
    watts: float  # that line's W


def read_union(files: Dict[int, Dict[str, Path]], hour: dt.datetime,
               problems: Optional[List[str]] = None) -> Dict[int, UnionRow]:
    """The one reading of an hour: second -> its row, each second once, across formats and parts.

    ``files``: part -> format -> path (``CURRENT_PART`` for the plain file).
    Parts are read in order and JSON before CSV within each, so a second's
    owner is the first part holding it in any format and its line the JSON's
    when any JSON file holds it. A damaged file is quarantined and the hour
    is read from the rest.
    """
    union: Dict[int, UnionRow] = {}
    prefix = hour.strftime("%Y-%m-%d %H")
    for part in sorted(files):
        for fmt in ("json", "csv"):
            path = files[part].get(fmt)
            if path is None:
                continue
            try:
                rows = file_lines(path, prefix)
            except FileNotFoundError:
                continue  # moved or deleted meanwhile (quarantine, retention, the writer's close)
            except DAMAGE as exc:
                reason = f"{type(exc).__name__}: {exc}"
                quarantine(path, reason)
                if problems is not None:
                    problems.append(f"{path.name}: damaged, skipped ({reason})")
                continue
            for second, watts, line in rows:
                held = union.get(second)
                if held is None:
                    union[second] = UnionRow(part, line, watts)
                elif fmt == "json" and held.line[0] != "{":
                    union[second] = UnionRow(held.owner, line, watts)
    return union


def union_rows(union: Dict[int, UnionRow], volts: Optional[List[float]] = None) -> List[Row]:
    """(second, W) of an hour's union in time order; each row's V into ``volts`` too when given."""
    ordered = sorted(union.items())
    if volts is not None:
        volts.extend(line_volts(row.line) for _, row in ordered)
    return [(second, row.watts) for second, row in ordered]


class HourSources:
    """Every file holding rows of one UTC hour of one meter: closed, late parts, current."""

    def __init__(self) -> None:
        self.by_hour: Dict[dt.datetime, Dict[int, Dict[str, Path]]] = {}

    def add(self, hour: dt.datetime, part: int, fmt: str, path: Path) -> None:
        self.by_hour.setdefault(hour, {}).setdefault(part, {})[fmt] = path

    def files(self, hour: dt.datetime) -> Tuple[str, ...]:
        """The hour's files as a summary names them (``csv.0``, ``json.1``, ...)."""
        return file_names(self.by_hour.get(hour, {}))

    def union(self, hour: dt.datetime, problems: Optional[List[str]] = None) -> Dict[int, UnionRow]:
        union = read_union(self.by_hour[hour], hour, problems)
        self.by_hour[hour] = present(self.by_hour[hour])  # without the files quarantined meanwhile
        if not self.by_hour[hour]:
            del self.by_hour[hour]
        return union

    def rows(self, hour: dt.datetime, problems: Optional[List[str]] = None,
             volts: Optional[List[float]] = None) -> List[Row]:
        """The hour's rows in time order, each second once (``read_union``)."""
        if hour not in self.by_hour:
            return []
        return union_rows(self.union(hour, problems), volts)


def present(files: Dict[int, Dict[str, Path]]) -> Dict[int, Dict[str, Path]]:
    kept = {part: {fmt: path for fmt, path in formats.items() if path.exists()} for part, formats in files.items()}
    return {part: formats for part, formats in kept.items() if formats}


def file_names(files: Dict[int, Dict[str, Path]]) -> Tuple[str, ...]:
    return tuple(sorted(f"{fmt}.{part}" for part, formats in files.items() for fmt in formats))


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
    from 1 and a number is never used twice, so probing stops at the first
    part missing in both formats, here and in failed/.
    """
    sources = HourSources()
    for hour_start in range(start - start % 3600, end, 3600):
        hour = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=hour_start)
        part = 0
        while True:
            names = [(fmt, closed_name(stem, fmt, hour, part)) for fmt in ("csv", "json")]
            found = [(fmt, data_dir / name) for fmt, name in names if (data_dir / name).exists()]
            if not found and not any((data_dir / FAILED_DIR / name).exists() for _, name in names):
                break  # a part in failed/ (damaged, or refused) still holds its number: probe on past it
            for fmt, path in found:
                sources.add(hour, part, fmt, path)
            part += 1
    add_current(data_dir, stem, sources)
    return sources


def hour_sources(data_dir: Path, stem: str, hour: dt.datetime) -> HourSources:
    """One UTC hour's files (with the plain file's, whatever hour it holds), by name and a stat each."""
    start = utc_epoch(hour)
    return sources_between(data_dir, stem, start, start + 3600)


def add_current(data_dir: Path, stem: str, sources: HourSources) -> None:
    """The plain current files, under every hour they hold (after any closed part of it).

    One hour, but for a crash that left rows of the next hour in it before
    the writer's recovery closes it.
    """
    for fmt in ("csv", "json"):
        current = data_dir / f"{stem}.{fmt}"
        try:
            with open(current, encoding="utf-8", errors="replace") as f:
                hours = {stamp[:13] for stamp in map(line_stamp, f) if stamp}
        except FileNotFoundError:
            continue
        for hour in hours:
            sources.add(parse_stamp(hour + ":00:00"), CURRENT_PART, fmt, current)


# --- summaries ------------------------------------------------------------------------


def summarize(hour: dt.datetime, files: Sequence[str], rows: Sequence[Row],
              volts: Sequence[float] = ()) -> Optional[HourSummary]:
    """The summary of one hour's rows (in time order, as ``HourSources.rows`` gives them); None for none.

    ``files``: the hour's files it was read from (``HourSources.files``).
    """
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
    parts = tuple(sorted({int(name.rsplit(".", 1)[1]) for name in files}))
    return HourSummary(hour, parts, rows[0], rows[-1], len(rows), gaps,
                       tuple(Bucket(ws, s, p, r) for ws, s, p, r in sums),
                       (min(volts), max(volts)) if volts else None, tuple(sorted(files)))


def summaries_path(data_dir: Path, stem: str) -> Path:
    return data_dir / f"{stem}{SUMMARY_SUFFIX}"


def read_summaries(data_dir: Path, stem: str, since: Optional[dt.datetime] = None) -> Dict[dt.datetime, HourSummary]:
    """Every hour's latest summary (from the hour ``since`` on, when given: the older lines are
    passed over by their hour, unparsed); an unreadable line (a torn append) is skipped with a warning."""
    return {summary.hour: summary for summary in summary_lines(data_dir, stem, since)}


def summary_lines(data_dir: Path, stem: str, since: Optional[dt.datetime] = None) -> Iterator[HourSummary]:
    """``read_summaries``' lines one at a time, in file order (a later one for an hour replaces an earlier),
    for a reader that keeps few of them: a year of summaries is about 13 MB in memory."""
    path = summaries_path(data_dir, stem)
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
                yield summary
    except FileNotFoundError:
        pass


def append_summaries(data_dir: Path, stem: str, summaries: List[HourSummary]) -> None:
    """Append in one write; a failure only costs the cache (the hours are read from their files again)."""
    if not summaries:
        return
    path = summaries_path(data_dir, stem)
    try:
        torn = False
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell():
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"  # a crash mid-append: start a line of our own
        except FileNotFoundError:
            pass
        fileops.append(path, (b"\n" if torn else b"") + "".join(s.to_line() for s in summaries).encode("utf-8"))
    except OSError as exc:
        log.warning("%s: summaries not saved (%s); the report reads those hours' files", path, exc)


def summarize_files(sources: HourSources, hour: dt.datetime,
                    problems: Optional[List[str]] = None) -> Optional[HourSummary]:
    """A closed hour's summary from the union of its files; None for the current hour or no rows
    (their rows are read each time). A damaged file is quarantined on the way; the rest count."""
    if CURRENT_PART in sources.by_hour.get(hour, {}):
        return None
    volts: List[float] = []
    rows = sources.rows(hour, problems, volts)
    if CURRENT_PART in sources.by_hour.get(hour, {}):
        return None
    return summarize(hour, sources.files(hour), rows, volts)


def summarize_closed_hours(data_dir: Path, stem: str) -> Dict[dt.datetime, HourSummary]:
    """Make and save the summaries still missing (before retention deletes the hours' rows)."""
    return hour_summaries(data_dir, stem, sources_for(data_dir, stem))


def hour_summaries(data_dir: Path, stem: str, sources: HourSources, only: Optional[Sequence[dt.datetime]] = None,
                   since: Optional[dt.datetime] = None, problems: Optional[List[str]] = None,
                   ) -> Dict[dt.datetime, HourSummary]:
    """Every closed hour's summary: saved ones still covering their files, the rest made now and saved.

    Hours whose raw files retention deleted keep their saved summary. An
    hour with the current plain file is not summarized (its rows are read
    each time). ``only``: make none but these hours' (the rest are made
    another time). ``since``: none before this hour (those lines are not
    even parsed).
    """
    saved = read_summaries(data_dir, stem, since)
    made = []
    for hour in sorted(sources.by_hour if only is None else set(only) & set(sources.by_hour)):
        if hour in saved and saved[hour].covers(sources.files(hour)):
            continue
        summary = summarize_files(sources, hour, problems)
        if summary is not None:
            saved[hour] = summary
            made.append(summary)
    append_summaries(data_dir, stem, made)
    return {hour: summary for hour, summary in saved.items()  # none for an hour whose files changed since
            if hour not in sources.by_hour or summary.covers(sources.files(hour))}
