"""What the live page and /metrics show of each meter: the reading now, today's kWh, hourly bars.

Two sources, joined at a seam so no second counts twice and none is missed:
the data files for the settled past, and the live state's in-memory history
for the last hour or so. Each closed hour's file is read once and kept as its
summary (``datadir.HourSummary``), so the hourly refresh reads the newly closed
hour, not two days of rows; every update in between is computed from memory.
Nothing here lists the folder: beside five years of files it costs what it
does beside one day.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .clock import Clock, time_zone, utc_epoch
from .config import Config
from .protocol import Measurement
from .datadir import CURRENT_PART, HourSources, HourSummary, sources_between, summarize_files
from .report import Integrator, MeterReport

STALE_AFTER = 10.0  # seconds without a reading: the meter has no "now" any more
BAR_HOURS = 48
CHART_SECONDS = 3600  # the line chart's span: the last hour
FLUSH_MARGIN = 60  # seconds beyond the flush interval before rows count as on disk
SUMMARY_TTL = 5.0  # seconds one computed summary serves every open page


def current(meter_live, monotonic_now: float) -> Optional[Measurement]:
    """The reading to show as "now", or None: never 0, never from a dropped link or older than ``STALE_AFTER``."""
    if not meter_live.connected or meter_live.measurement is None or meter_live.received_monotonic is None:
        return None
    if monotonic_now - meter_live.received_monotonic > STALE_AFTER:
        return None
    return meter_live.measurement


def flush_lag(config: Config) -> int:
    """Seconds after which a reading is surely in the files (flush interval plus a margin)."""
    return int(config.general.data_buffer_size) + FLUSH_MARGIN


def history_seconds(config: Config) -> int:
    """Memory the page needs: an hour of chart, plus the rows not yet surely on disk."""
    return 3600 + flush_lag(config)


def wall_epoch(local_hour: dt.datetime) -> int:
    """A naive local time as seconds since 1970 of the same wall clock (the page plots it as UTC)."""
    return int((local_hour - dt.datetime(1970, 1, 1)).total_seconds())


@dataclass
class _FilePart:
    """One meter's files integrated up to the seam, refreshed once per closed hour."""

    seam: int  # UTC epoch second: files before it, memory from it on
    report: MeterReport
    problems: List[str] = field(default_factory=list)


class EnergyView:
    """Today's kWh and cost and 48 hourly kWh bars per meter, for the page."""

    def __init__(self, config: Config, live, clock: Clock) -> None:
        self.data_dir: Path = config.general.data_dir
        self.stems = config.file_stems()
        self.live = live
        self.clock = clock
        self.tz = time_zone(config.report.timezone)
        self.tariff = config.pricing()
        self.lag = flush_lag(config)
        # W as the report reads it back from the files, so memory and files agree to the row.
        self.stored = float if "json" in config.general.data_format else stored_watts  # as the folder's union reads W
        self._lock = threading.Lock()
        self._settled_hour: Optional[int] = None
        self._files: Dict[str, _FilePart] = {}
        self._summary: Optional[Tuple[float, Dict[str, dict]]] = None
        self._older: Dict[str, Tuple[int, List[Tuple[int, float]]]] = {}  # meter -> (memory's first second, rows)
        self._closed: Dict[str, Dict[dt.datetime, HourSummary]] = {meter: {} for meter in self.stems}
        self.file_reads = 0  # how often the files were looked at: once per closed hour, not per view
        self.hours_read = 0  # closed hours whose rows were read: each once, then its summary serves

    def summary(self) -> Dict[str, dict]:
        """Per meter: {"kwh", "cost", "bars": [[wall epochs], [kWh]]}; shared by every open page."""
        with self._lock:
            mono = self.clock.monotonic()
            if self._summary is not None and mono - self._summary[0] < SUMMARY_TTL:
                return self._summary[1]
            now = utc_epoch(self.clock.now())
            self._refresh_files(now)
            result = {meter: self._meter_summary(meter, now) for meter in self.stems}
            self._summary = (mono, result)
            return result

    def last_hour(self, meter: str) -> List[Tuple[int, float]]:
        """The chart's hour of (epoch second, W): memory, and the files for what memory lacks.

        Memory lacks the start of the hour only after a restart; those rows are
        read once per start-up (cached by memory's first second), not per page.
        """
        history = self.live.history(meter)
        end = history[-1][0] if history else utc_epoch(self.clock.now())
        start = end - 3600
        first = history[0][0] if history else end + 1
        older: List[Tuple[int, float]] = []
        if first > start + 1:
            with self._lock:
                cached = self._older.get(meter)
                if cached is None or cached[0] != first:
                    self.file_reads += 1
                    cached = self._older[meter] = (first, file_rows(self.data_dir, self.stems[meter], start, first))
            older = [row for row in cached[1] if row[0] > start]
        return older + [row for row in history if row[0] > start]

    def _refresh_files(self, now: int) -> None:
        """Re-read the files only when another hour has surely reached the disk."""
        settled = (now - self.lag) // 3600 * 3600
        if settled == self._settled_hour:
            return
        self._settled_hour = settled
        self.file_reads += 1
        start = self._window_start(now)
        for meter, stem in self.stems.items():
            history = self.live.history(meter)
            # From the settled hour on, memory has every row; a daemon started
            # later than that has them in memory only from its first reading.
            seam = max(settled, history[0][0]) if history else max(settled, now)
            self._files[meter] = _FilePart(seam, self._integrate_files(meter, stem, start, seam))

    def _integrate_files(self, meter: str, stem: str, start: int, seam: int) -> MeterReport:
        """The files' integral over [start, seam): whole closed hours from their summaries, the rest by rows."""
        report = MeterReport(meter)
        sources = sources_between(self.data_dir, stem, start, seam)
        closed = self._closed[meter]
        for hour in [h for h in closed if utc_epoch(h) < start]:  # out of the window for good
            del closed[hour]
        integrator = Integrator(report, self.tz, start, seam, self.tariff)
        for hour in sorted(sources.by_hour):
            hour_start = utc_epoch(hour)
            if not start <= hour_start < seam:
                continue
            summary = self._hour_summary(closed, sources, hour) if hour_start + 3600 <= seam else None
            if summary is not None:
                integrator.add_summary(hour_start, summary)
            else:  # the hour the seam cuts, the current file's, or an unreadable one: its rows
                integrator.add_hour(hour_start, sources.rows(hour, report.problems))
        integrator.finish()
        return report

    def _hour_summary(self, closed: Dict[dt.datetime, HourSummary], sources: HourSources,
                 hour: dt.datetime) -> Optional[HourSummary]:
        """A closed hour's summary, made from its rows the first time (and again if a late part joins it)."""
        parts = tuple(sorted(sources.by_hour[hour]))
        if CURRENT_PART in parts:
            return None
        summary = closed.get(hour)
        if summary is None or not summary.covers(sources.files(hour)):
            self.hours_read += 1
            summary = summarize_files(sources, hour)  # unreadable: None, and add_hour tells of it
            if summary is None:
                closed.pop(hour, None)
                return None
            closed[hour] = summary
        return summary

    def _window_start(self, now: int) -> int:
        """The first UTC hour the bars or today's total need."""
        local_now = dt.datetime.fromtimestamp(now, self.tz)
        midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
        return min(int(midnight.timestamp()), now - BAR_HOURS * 3600) // 3600 * 3600

    def _meter_summary(self, meter: str, now: int) -> dict:
        part = self._files[meter]
        memory = MeterReport(meter)
        integrator = Integrator(memory, self.tz, part.seam, 2**62, self.tariff)
        for hour_start, rows in by_hour(self.live.history(meter), self.stored):
            integrator.add_hour(hour_start, rows)
        integrator.finish()
        local_now = dt.datetime.fromtimestamp(now, self.tz).replace(tzinfo=None)
        today = local_now.date()
        watt_seconds = sum(r.days[today].watt_seconds for r in (part.report, memory) if today in r.days)
        cost = sum(r.days[today].cost for r in (part.report, memory) if today in r.days)
        this_hour = local_now.replace(minute=0, second=0, microsecond=0)
        hours = [this_hour - dt.timedelta(hours=h) for h in range(BAR_HOURS - 1, -1, -1)]
        wh = [part.report.hourly_wh.get(h, 0.0) + memory.hourly_wh.get(h, 0.0) for h in hours]
        kwh = watt_seconds / 3_600_000
        return {
            "kwh": round(kwh, 6),
            "cost": round(cost, 4),  # each quarter hour at the tariff then
            "bars": [[wall_epoch(h) for h in hours], [round(w / 1000, 6) for w in wh]],
            "runs": runs_shown(self.live.snapshot()[meter], now - CHART_SECONDS),
        }


def runs_shown(state, since: int) -> List[dict]:
    """The runs the chart's hour shows as bands: those that ended after ``since``, and the one going on."""
    shown = [{"start": run.start, "end": run.end, "kwh": round(run.kwh, 6), "cost": round(run.cost, 4),
              "running": False} for _, run in state.recent_runs if run.end > since]
    if state.run is not None:
        run = state.run
        shown.append({"start": run.start, "end": run.end, "kwh": round(run.kwh, 6), "cost": round(run.cost, 4),
                      "running": True})
    return shown


def stored_watts(watts: float) -> float:
    """W as a CSV row keeps it (two decimals), read back."""
    return float(f"{watts:.2f}")


def file_rows(data_dir: Path, stem: str, start: int, end: int) -> List[Tuple[int, float]]:
    """(epoch second, W) of one meter's file rows with start < t < end."""
    sources = sources_between(data_dir, stem, start - 3600, end)
    rows: List[Tuple[int, float]] = []
    problems: List[str] = []
    for hour in sorted(sources.by_hour):
        hour_start = utc_epoch(hour)
        if start - 3600 < hour_start < end:
            rows += [(hour_start + s, w) for s, w in sources.rows(hour, problems) if start < hour_start + s < end]
    return rows


def by_hour(history: List[Tuple[int, float]], stored: Callable[[float], float] = float
            ) -> List[Tuple[int, List[Tuple[int, float]]]]:
    """(UTC hour start, [(second of the hour, W)]) groups of (epoch second, W) rows, in order."""
    groups: List[Tuple[int, List[Tuple[int, float]]]] = []
    for t, watts in history:
        hour_start = t - t % 3600
        if not groups or groups[-1][0] != hour_start:
            groups.append((hour_start, []))
        groups[-1][1].append((t - hour_start, stored(watts)))
    return groups
