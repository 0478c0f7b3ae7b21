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
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .tariff import Tariff
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
    cost: float = 0.0  # each quarter hour at the tariff in force then
    periods: Dict[str, List[float]] = field(default_factory=dict)  # tariff period -> [watt-seconds, cost]
    resting: List[float] = field(default_factory=lambda: [0.0, 0.0])  # [watt-seconds, seconds] of quarter
    # hours at rest (standby_watts)

    @property
    def kwh(self) -> float:
        return self.watt_seconds / 3_600_000

    @property
    def standby_watts(self) -> Optional[float]:
        """The mean W over the day's quarter hours at rest; None when it never rested a whole quarter hour.

        At rest: no row of the quarter hour reached the meter's ``stop_watts``
        (the run detector's line between working and resting). A low
        percentile of the readings would read a fridge's compressor or a
        noisy standby's dips as part of the level; this is the level itself,
        the noise averaged out, a run's seconds left out by definition, and
        exact from the hourly summaries (their buckets keep each quarter
        hour's peak, energy and seconds), so a year costs no rows read.
        """
        watt_seconds, seconds = self.resting
        return watt_seconds / seconds if seconds else None

    @property
    def standby_share(self) -> Optional[float]:
        """The share of the day's kWh the standby level took over the day's covered seconds."""
        watts = self.standby_watts
        if watts is None or not self.watt_seconds:
            return None
        return min(1.0, watts * self.covered_seconds / self.watt_seconds)

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
            total.cost += d.cost
            for name, (ws, cost) in d.periods.items():
                sums = total.periods.setdefault(name, [0.0, 0.0])
                sums[0] += ws
                sums[1] += cost
            total.resting = [total.resting[0] + d.resting[0], total.resting[1] + d.resting[1]]
        return total


# --- integrating ---------------------------------------------------------------------


class Integrator:
    """Accumulates one meter's rows, in time order, into local days and hours.

    The hot path works in integer seconds and day/hour indices; dates are
    made once, at the end.
    """

    def __init__(self, report: MeterReport, tz: dt.tzinfo, start: int, end: int,
                 tariff: Optional[Tariff] = None, resting_below: Optional[float] = None) -> None:
        self.report = report
        self.tz = tz
        self.tariff = tariff or Tariff.flat(0.0)
        # W a quarter hour's peak must stay under to count at rest (the standby level); None: not measured
        self.resting_below = resting_below
        self._rest_bucket: Optional[int] = None  # the quarter hour (local) of add_hour's rows being collected
        self._rest_sums = [0.0, 0, 0.0]  # its watt-seconds, seconds, peak
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
        self._rest_flush()
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

    def _rest_add(self, local: int, watt_seconds: float, seconds: int, watts: float) -> None:
        """Held watt-seconds into their quarter hour's sums: at rest or not is known once it is whole
        (a summary's bucket and its hour's last row, credited later, are one quarter hour)."""
        bucket = local // BUCKET_SECONDS
        if bucket != self._rest_bucket:
            self._rest_flush()
            self._rest_bucket = bucket
        sums = self._rest_sums
        sums[0] += watt_seconds
        sums[1] += seconds
        sums[2] = max(sums[2], watts)

    def _rest_flush(self) -> None:
        if self._rest_bucket is not None:
            watt_seconds, seconds, peak = self._rest_sums
            self._rest(self._rest_bucket * BUCKET_SECONDS, watt_seconds, seconds, peak)
        self._rest_bucket, self._rest_sums = None, [0.0, 0, 0.0]

    def _rest(self, local: int, watt_seconds: float, seconds: int, peak: float) -> None:
        if seconds and peak < self.resting_below:
            resting = self._days[local // DAY_SECONDS].resting
            resting[0] += watt_seconds
            resting[1] += seconds

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
        period, price = self.tariff.at(local)
        cost = held.watt_seconds / 3_600_000 * price
        day.cost += cost
        sums = day.periods.get(period)
        if sums is None:
            sums = day.periods[period] = [0.0, 0.0]
        sums[0] += held.watt_seconds
        sums[1] += cost
        if self.resting_below is not None:
            self._rest_add(local, held.watt_seconds, held.seconds, held.peak_watts)
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
    tariff: Optional[Tariff] = None,
    resting_below: Optional[float] = None,
) -> MeterReport:
    """One meter's days between ``first_day`` and ``last_day`` (local dates, inclusive).

    ``use_summaries`` False: every row of every hour, the reference the summaries are checked against.
    """
    report = MeterReport(meter)
    start, end = day_range(tz, first_day, last_day)
    sources = sources_for(data_dir, stem)
    summaries = hour_summaries(data_dir, stem, sources, problems=report.problems) if use_summaries else {}
    integrator = Integrator(report, tz, start, end, tariff, resting_below)
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


# --- runs: every row ------------------------------------------------------------------


def meter_rows(data_dir: Path, stem: str, start: int, end: int, problems: List[str]) -> Iterator[Tuple[int, float]]:
    """Every row of one meter with start <= t < end (UTC epoch seconds), in time order.

    The one place the runs read raw rows (summaries cannot say where a run
    starts): the data folder's hour reader is called here and nowhere else.
    A short span probes its hours by name (a restart reads back a few hours
    beside years of files); a long one lists the folder once.
    """
    short = 0 <= start and end - start <= 31 * DAY_SECONDS
    sources = sources_between(data_dir, stem, start, end) if short else sources_for(data_dir, stem)
    for hour in sorted(sources.by_hour):
        hour_start = utc_epoch(hour)
        if hour_start + 3600 <= start or hour_start >= end:
            continue
        for second, watts in sources.rows(hour, problems):
            if start <= hour_start + second < end:
                yield hour_start + second, watts


def day_range(tz: dt.tzinfo, first_day: Optional[dt.date], last_day: Optional[dt.date]) -> Tuple[int, int]:
    """[start, end) in UTC epoch seconds of the local days asked for (everything when open)."""
    start = local_midnight_utc(first_day, tz) if first_day else -(2**62)
    end = local_midnight_utc(last_day + dt.timedelta(days=1), tz) if last_day else 2**62
    return start, end


def runs_table(runs, going, tz: dt.tzinfo, currency: str) -> Iterator[str]:
    """``report --runs``: one line per run, local times; the run still going at the end, marked."""
    yield f"{'start':<19}  {'end':<19}  {'minutes':>7}  {'kWh':>8}  {'cost ' + currency:>11}  {'peak W':>8}"
    for run in list(runs) + ([going] if going else []):
        start = dt.datetime.fromtimestamp(run.start, tz).strftime("%Y-%m-%d %H:%M:%S")
        end = "running" if run is going else dt.datetime.fromtimestamp(run.end, tz).strftime("%Y-%m-%d %H:%M:%S")
        yield (f"{start:<19}  {end:<19}  {run.seconds / 60:>7.1f}  {run.kwh:>8.4f}  {run.cost:>11.2f}  "
               f"{run.peak_watts:>8.1f}")


def runs_csv(meter: str, runs, tz: dt.tzinfo) -> Iterator[str]:
    for run in runs:
        start = dt.datetime.fromtimestamp(run.start, tz).isoformat()
        end = dt.datetime.fromtimestamp(run.end, tz).isoformat()
        yield f"{meter},{start},{end},{run.seconds},{run.kwh:.6f},{run.cost:.4f},{run.peak_watts}"


# --- output --------------------------------------------------------------------------


def pricing_label(tariff: Tariff, currency: str) -> str:
    """``25 JPY/kWh`` for one price, else the periods' names."""
    if len(tariff.plans) == 1 and not tariff.surcharges and len(set(tariff.plans[0].prices)) == 1:
        return f"{tariff.plans[0].prices[0]:g} {currency}/kWh"
    return f"tariff ({', '.join(tariff.period_names)}), {currency}"


def _standby(d: DayTotal) -> str:
    watts, share = d.standby_watts, d.standby_share
    return f"{watts:>9.2f}  {share * 100:>6.1f}" if watts is not None and share is not None else f"{'-':>9}  {'-':>6}"


def table(report: MeterReport, tz_name: str, tariff: Tariff, currency: str) -> Iterator[str]:
    yield f"meter {report.meter}: {tz_name} days, {pricing_label(tariff, currency)}"
    yield (f"{'date':<10}  {'kWh':>9}  {'cost ' + currency:>11}  {'hours':>6}  {'peak W':>8}  {'standby W':>9}  "
           f"{'stby %':>6}")
    for day in sorted(report.days):
        d = report.days[day]
        yield (f"{day.isoformat():<10}  {d.kwh:>9.3f}  {d.cost:>11.2f}  {d.hours_covered:>6.1f}  {d.peak_watts:>8.1f}  "
               f"{_standby(d)}")
    total = report.total()
    yield (f"{'total':<10}  {total.kwh:>9.3f}  {total.cost:>11.2f}  {total.hours_covered:>6.1f}  "
           f"{total.peak_watts:>8.1f}  {_standby(total)}")


def standby_line(report: MeterReport, price_now: float, currency: str) -> Optional[str]:
    """The standby level over the whole range, as a year's kWh and cost at today's average price."""
    watts = report.total().standby_watts
    if watts is None:
        return None
    kwh = watts * 8760 / 1000
    return (f"standby {watts:.2f} W: {kwh:.1f} kWh a year, {kwh * price_now:.0f} {currency} a year "
            f"at the current tariff ({price_now:.2f} {currency}/kWh on average)")


def period_table(report: MeterReport, tariff: Tariff, currency: str) -> Iterator[str]:
    """``--by-period``: kWh and cost per tariff period, per day and in total."""
    yield f"{'date':<10}  {'period':<16}  {'kWh':>9}  {'cost ' + currency:>11}"
    names = tariff.period_names
    for day in sorted(report.days) + [None]:
        d = report.total() if day is None else report.days[day]
        for name in names:
            if name in d.periods:
                ws, cost = d.periods[name]
                yield f"{'total' if day is None else day.isoformat():<10}  {name:<16}  {ws / 3_600_000:>9.3f}  {cost:>11.2f}"


def csv_rows(report: MeterReport) -> Iterator[str]:
    for day in sorted(report.days):
        d = report.days[day]
        standby = "" if d.standby_watts is None else f"{d.standby_watts:.3f}"
        share = "" if d.standby_share is None else f"{d.standby_share:.4f}"
        yield (f"{day.isoformat()},{report.meter},{d.kwh:.6f},{d.cost:.4f},{d.hours_covered:.4f},{d.peak_watts},"
               f"{standby},{share}")


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
