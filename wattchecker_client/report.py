"""kWh and cost per local day, Wh per local hour, streamed from the data dir's files.

Energy is the integral of W over time, each row holding for its own time
step: the gap to the next row, when that is at most ``MAX_STEP`` seconds.
A longer step is a gap: the row counts for one second, the rest of the step
is missing coverage, never filled in. Rows are UTC; days and hours are split
in the chosen time zone, DST days included. Files are read one hour at a time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .clock import time_zone, utc_epoch  # noqa: F401  (time_zone: the report's callers use it)
from .datadir import (BUCKET_SECONDS, MAX_STEP, Bucket, HourSources, HourSummary,  # noqa: F401  (re-exported)
                      held_seconds, hour_summaries, parse_line, sources_between, sources_for,
                      summarize_closed_hours)

DAY_SECONDS = 86400


@dataclass
class DayTotal:
    """One local day of one meter."""

    day: dt.date
    watt_seconds: float = 0.0
    covered_seconds: float = 0.0
    peak_watts: float = 0.0

    @property
    def kwh(self) -> float:
        return self.watt_seconds / 3_600_000

    @property
    def hours_covered(self) -> float:
        return self.covered_seconds / 3600


@dataclass
class MeterReport:
    meter: str
    days: Dict[dt.date, DayTotal] = field(default_factory=dict)
    hourly_wh: Dict[dt.datetime, float] = field(default_factory=dict)  # local hour -> Wh
    # local hour -> seconds of it with data, by the same rule as its Wh: under
    # 3600 means the hour's Wh is short (the first hour, the current one, a gap)
    hourly_seconds: Dict[dt.datetime, int] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    rows: int = 0

    def total(self) -> DayTotal:
        total = DayTotal(dt.date.min)
        for d in self.days.values():
            total.watt_seconds += d.watt_seconds
            total.covered_seconds += d.covered_seconds
            total.peak_watts = max(total.peak_watts, d.peak_watts)
        return total


# --- integrating ---------------------------------------------------------------------


class Integrator:
    """Accumulates one meter's rows, in time order, into local days and hours.

    The hot path works in integer seconds and day/hour indices; dates are
    made once, at the end.
    """

    def __init__(self, report: MeterReport, tz: dt.tzinfo, start: int, end: int) -> None:
        self.report = report
        self.tz = tz
        self.start, self.end = start, end  # UTC epoch seconds, end exclusive
        self.prev: Optional[Tuple[int, float]] = None
        self._offset = 0  # the zone's offset at the previous row
        self._days: Dict[int, DayTotal] = {}
        self._hours: Dict[int, float] = {}
        self._hour_seconds: Dict[int, int] = {}
        self._day_index: Optional[int] = None
        self._day: Optional[DayTotal] = None

    def offset(self, t: int) -> int:
        utc = dt.datetime.fromtimestamp(t, dt.timezone.utc)
        return int(utc.astimezone(self.tz).utcoffset().total_seconds())

    def add_hour(self, hour_start: int, rows: Sequence[Tuple[int, float]]) -> None:
        # One zone offset serves the whole hour unless it changes inside it (a DST switch).
        off_start, off_end = self.offset(hour_start), self.offset(hour_start + 3599)
        for second, watts in rows:
            t = hour_start + second
            if not self.start <= t < self.end:
                continue
            self.report.rows += 1
            if self.prev is not None:
                self._credit(t - self.prev[0])
            self.prev = (t, watts)
            self._offset = off_start if off_start == off_end else self.offset(t)

    def add_summary(self, hour_start: int, summary: HourSummary) -> None:
        """An hour from its summary: the same totals as ``add_hour`` over its rows (to rounding).

        The previous row holds until the summary's first, the buckets are
        credited where their rows lie, and the last row waits for the next
        hour. Rows outside the range are left out by whole buckets (the range
        starts at a local midnight, a multiple of 15 minutes in UTC).
        """
        whole = self.start <= hour_start and hour_start + 3600 <= self.end
        first_t = hour_start + summary.first[0]
        if whole and self.prev is not None:
            self._credit(first_t - self.prev[0])
        for index, bucket in enumerate(summary.buckets):
            bucket_start = hour_start + index * BUCKET_SECONDS
            if not self.start <= bucket_start < self.end:
                continue
            self.report.rows += bucket.rows
            if bucket.seconds:
                self._credit_many(bucket_start + self.offset(bucket_start), bucket)
        last_t = hour_start + summary.last[0]
        if whole or self.start <= last_t < self.end:
            self.prev = (last_t, summary.last[1])
            self._offset = self.offset(last_t)

    def finish(self) -> None:
        if self.prev is not None:
            self._credit(None)
            self.prev = None
        epoch_day = dt.date(1970, 1, 1)
        for index, total in self._days.items():
            total.day = epoch_day + dt.timedelta(days=index)
            self.report.days[total.day] = total
        epoch_hour = dt.datetime(1970, 1, 1)
        for index, wh in self._hours.items():
            self.report.hourly_wh[epoch_hour + dt.timedelta(hours=index)] = wh
            self.report.hourly_seconds[epoch_hour + dt.timedelta(hours=index)] = self._hour_seconds[index]

    def _credit(self, step: Optional[int]) -> None:
        """The previous row holds for its step, or one second before a gap."""
        t, watts = self.prev
        seconds = held_seconds(step)
        if seconds:
            self._credit_many(t + self._offset, Bucket(watts * seconds, seconds, watts, 1))

    def _credit_many(self, local: int, held: Bucket) -> None:
        """Watt-seconds held at one local second (one row's, or a quarter hour's of a summary)."""
        day_index = local // DAY_SECONDS
        if day_index != self._day_index:
            self._day_index = day_index
            self._day = self._days.get(day_index)
            if self._day is None:
                self._day = self._days[day_index] = DayTotal(dt.date.min)
        day = self._day
        day.watt_seconds += held.watt_seconds
        day.covered_seconds += held.seconds
        if held.peak_watts > day.peak_watts:
            day.peak_watts = held.peak_watts
        hour_index = local // 3600
        self._hours[hour_index] = self._hours.get(hour_index, 0.0) + held.watt_seconds / 3600
        self._hour_seconds[hour_index] = self._hour_seconds.get(hour_index, 0) + held.seconds


def local_midnight_utc(day: dt.date, tz: dt.tzinfo) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())


def meter_report(
    data_dir: Path,
    stem: str,
    meter: str,
    tz: dt.tzinfo,
    first_day: Optional[dt.date] = None,
    last_day: Optional[dt.date] = None,
    use_summaries: bool = True,
) -> MeterReport:
    """One meter's days between ``first_day`` and ``last_day`` (local dates, inclusive).

    ``use_summaries`` False: every row of every hour, the reference the summaries are checked against.
    """
    report = MeterReport(meter)
    start = local_midnight_utc(first_day, tz) if first_day else -(2**62)
    end = local_midnight_utc(last_day + dt.timedelta(days=1), tz) if last_day else 2**62
    sources = sources_for(data_dir, stem)
    summaries = hour_summaries(data_dir, stem, sources, problems=report.problems) if use_summaries else {}
    integrator = Integrator(report, tz, start, end)
    for hour in sorted(set(sources.by_hour) | set(summaries)):
        hour_start = utc_epoch(hour)
        if hour_start + 3600 <= start or hour_start >= end:
            continue
        summary = summaries.get(hour)
        if summary is not None and (hour not in sources.by_hour or start <= hour_start <= end - 3600):
            integrator.add_summary(hour_start, summary)
        else:  # the current hour, an unreadable one, or one cut by the range with its rows at hand
            integrator.add_hour(hour_start, sources.rows(hour, report.problems))
    integrator.finish()
    return report


# --- output --------------------------------------------------------------------------


def table(report: MeterReport, tz_name: str, price: float, currency: str) -> Iterator[str]:
    yield f"meter {report.meter}: {tz_name} days, {price:g} {currency}/kWh"
    yield f"{'date':<10}  {'kWh':>9}  {'cost ' + currency:>11}  {'hours':>6}  {'peak W':>8}"
    for day in sorted(report.days):
        d = report.days[day]
        yield f"{day.isoformat():<10}  {d.kwh:>9.3f}  {d.kwh * price:>11.2f}  {d.hours_covered:>6.1f}  {d.peak_watts:>8.1f}"
    total = report.total()
    yield f"{'total':<10}  {total.kwh:>9.3f}  {total.kwh * price:>11.2f}  {total.hours_covered:>6.1f}  {total.peak_watts:>8.1f}"


def csv_rows(report: MeterReport, price: float) -> Iterator[str]:
    for day in sorted(report.days):
        d = report.days[day]
        yield f"{day.isoformat()},{report.meter},{d.kwh:.6f},{d.kwh * price:.4f},{d.hours_covered:.4f},{d.peak_watts}"


# --- the BigQuery view ---------------------------------------------------------------------


def bigquery_view_sql(table_ref: str, tz_name: str, price: float, several_meters: bool) -> str:
    """A view with the same per-day numbers from the uploaded table (for Looker Studio)."""
    device = "device" if several_meters else "'all' AS device"
    view = table_ref.rsplit(".", 1)[0] + ".wattchecker_daily"
    return f"""CREATE OR REPLACE VIEW `{view}` AS
WITH params AS (
  SELECT '{tz_name}' AS tz, {float(price)!r} AS price_per_kwh, {MAX_STEP} AS max_step_seconds
),
readings AS (
  SELECT CAST(datetime AS TIMESTAMP) AS t, W, {device}
  FROM `{table_ref}`
),
steps AS (
  SELECT device, t, W,
    TIMESTAMP_DIFF(LEAD(t) OVER (PARTITION BY device ORDER BY t), t, SECOND) AS step
  FROM readings
),
held AS (
  SELECT device, DATE(t, (SELECT tz FROM params)) AS day, W,
    IF(step IS NOT NULL AND step <= (SELECT max_step_seconds FROM params), step, 1) AS seconds
  FROM steps
)
SELECT device, day,
  SUM(W * seconds) / 3600000 AS kwh,
  SUM(W * seconds) / 3600000 * (SELECT price_per_kwh FROM params) AS cost,
  SUM(seconds) / 3600 AS hours_covered,
  MAX(W) AS peak_w
FROM held
GROUP BY device, day
"""
