"""The data folder's contract, beside the hour files: the integration rule and hourly summaries.

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
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

MAX_STEP = 5  # seconds
BUCKET_SECONDS = 900  # the largest step every time-zone offset is a multiple of
BUCKETS = 3600 // BUCKET_SECONDS
SUMMARY_SUFFIX = ".summaries.jsonl"
SUMMARY_HOUR_FORMAT = "%Y-%m-%d_%H"  # as in the hour files' names

Row = Tuple[int, float]  # (second within its hour, W)


def closed_name(stem: str, fmt: str, hour: dt.datetime, part: int = 0) -> str:
    """``wattchecker-data.csv.2019-09-07_09.gz`` (``.partN`` before ``.gz`` for a late part)."""
    suffix = f".part{part}" if part else ""
    return f"{stem}.{fmt}.{hour.strftime(SUMMARY_HOUR_FORMAT)}{suffix}.gz"


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


@dataclass(frozen=True)
class Bucket:
    """A quarter hour of rows, the last row of the hour left out (its hold is the next hour's)."""

    watt_seconds: float = 0.0
    seconds: int = 0
    peak_watts: float = 0.0  # of the rows that held for a second or more, as the report's peak
    rows: int = 0


@dataclass(frozen=True)
class HourSummary:
    """One closed UTC hour of one meter, enough to integrate it without its rows."""

    hour: dt.datetime  # UTC, naive
    parts: Tuple[int, ...]  # the closed files' parts it was made from: a new part makes it stale
    first: Row
    last: Row
    rows: int
    gaps: int  # steps longer than MAX_STEP inside the hour
    buckets: Tuple[Bucket, ...]

    @property
    def watt_seconds(self) -> float:
        """The hour's energy, its last row's hold left to whatever follows."""
        return sum(b.watt_seconds for b in self.buckets)

    def to_line(self) -> str:
        return json.dumps({
            "hour": self.hour.strftime(SUMMARY_HOUR_FORMAT), "parts": list(self.parts),
            "first": list(self.first), "last": list(self.last), "rows": self.rows, "gaps": self.gaps,
            "buckets": [[b.watt_seconds, b.seconds, b.peak_watts, b.rows] for b in self.buckets],
        }, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, line: str) -> "HourSummary":
        data = json.loads(line)
        buckets = tuple(Bucket(float(ws), int(s), float(p), int(r)) for ws, s, p, r in data["buckets"])
        if len(buckets) != BUCKETS:
            raise ValueError(f"{len(buckets)} buckets, not {BUCKETS}")
        first, last = data["first"], data["last"]
        return cls(dt.datetime.strptime(data["hour"], SUMMARY_HOUR_FORMAT), tuple(int(p) for p in data["parts"]),
                   (int(first[0]), float(first[1])), (int(last[0]), float(last[1])), int(data["rows"]),
                   int(data["gaps"]), buckets)


def summarize(hour: dt.datetime, parts: Sequence[int], rows: Sequence[Row]) -> Optional[HourSummary]:
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
                       tuple(Bucket(ws, s, p, r) for ws, s, p, r in sums))


def summaries_path(data_dir: Path, stem: str) -> Path:
    return data_dir / f"{stem}{SUMMARY_SUFFIX}"


def read_summaries(data_dir: Path, stem: str) -> Dict[dt.datetime, HourSummary]:
    """Every hour's latest summary; an unreadable line (a torn append) is skipped with a warning."""
    path = summaries_path(data_dir, stem)
    found: Dict[dt.datetime, HourSummary] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
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
        with open(path, "a+b") as f:
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
