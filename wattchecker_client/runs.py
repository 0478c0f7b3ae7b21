"""Runs of an appliance: sans-I/O. Rows in (epoch second, W), events out (``Started``, ``Finished``).

A run starts at the first row above ``start_watts`` and ends when W stays
below ``stop_watts`` for ``stop_after`` seconds: the wait carries a run over
the pauses of a wash or a dishwasher cycle. The run ends where its last
working row (W at or above ``stop_watts``) stops holding; the quiet wait
after it is not part of it.

The same detector runs in the live path (live.py: the ``running`` sensor and
the ``finished`` event) and in ``report --runs`` over the files, so the two
agree to the row. Its energy is the report's: each row holds by
``datadir.held_seconds`` (the gap to the next row up to 5 s, else 1 s), and a
run's kWh are the holds of its rows from its first to its last working row,
pauses included. A gap of ``stop_after`` seconds or more without rows ends a
run: nobody knows what the appliance did meanwhile.

Because a run is over once ``stop_after`` quiet seconds pass, the detector's
state at a row after such a quiet stretch does not depend on anything before
it (``resume_index``): a restart replays the files from there, so a run that
was going on is neither lost nor split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

from .datadir import MAX_STEP, held_seconds


@dataclass(frozen=True)
class RunSettings:
    """A device's thresholds (config: ``runs:``); the defaults suit a washing machine."""

    start_watts: float = 15.0  # above it a run starts (a washer's drum turning, heating)
    stop_watts: float = 5.0  # below it the appliance rests (standby, display only)
    stop_after: int = 300  # seconds below stop_watts that end a run: longer than the pauses of a wash (up to 4 min)


@dataclass(frozen=True)
class Run:
    """One run: UTC epoch seconds, ``end`` exclusive (the last working row's hold ends there)."""

    start: int
    end: int
    watt_seconds: float
    cost: float
    peak_watts: float

    @property
    def seconds(self) -> int:
        return self.end - self.start

    @property
    def kwh(self) -> float:
        return self.watt_seconds / 3_600_000


@dataclass(frozen=True)
class Started:
    start: int


@dataclass(frozen=True)
class Finished:
    run: Run


Event = Union[Started, Finished]
Price = Callable[[int], float]  # UTC epoch second -> price per kWh then


class RunDetector:
    """Feed rows in time order; each ``feed`` returns the events that row caused (usually none)."""

    def __init__(self, settings: RunSettings, price: Optional[Price] = None) -> None:
        self.settings = settings
        self.price = price or (lambda t: 0.0)
        self.prev: Optional[Tuple[int, float]] = None  # the last row: its hold is known at the next one
        self.start: Optional[int] = None  # the current run's first second; None: idle
        self.work_end = 0  # where the last working row's hold ends (so far)
        self.watt_seconds = self.cost = self.peak = 0.0  # of the run up to its last working row
        self.quiet = [0.0, 0.0]  # watt-seconds and cost since the last working row (a pause, or the end)

    @property
    def running(self) -> bool:
        return self.start is not None

    def current(self) -> Optional[Run]:
        """The run going on, up to its last working row so far; None when idle."""
        if self.start is None:
            return None
        return Run(self.start, max(self.work_end, self.start + 1), self.watt_seconds, self.cost, self.peak)

    def state(self) -> dict:
        """Everything the detector knows, as JSON values: a restart goes on from it (live.py's energy.json)."""
        return {"prev": list(self.prev) if self.prev else None, "start": self.start, "work_end": self.work_end,
                "watt_seconds": self.watt_seconds, "cost": self.cost, "peak": self.peak, "quiet": list(self.quiet)}

    def resume(self, state: dict) -> None:
        """Take up a ``state()``; ValueError (or KeyError, TypeError) for one that cannot be right."""
        prev, start = state["prev"], state["start"]
        quiet = [float(q) for q in state["quiet"]]
        if len(quiet) != 2 or (prev is not None and len(prev) != 2) or (start is not None and prev is None):
            raise ValueError("a malformed run state")
        self.prev = (int(prev[0]), float(prev[1])) if prev is not None else None
        self.start = int(start) if start is not None else None
        self.work_end = int(state["work_end"])
        self.watt_seconds, self.cost, self.peak = float(state["watt_seconds"]), float(state["cost"]), float(state["peak"])
        self.quiet = quiet

    def feed(self, t: int, watts: float) -> List[Event]:
        events: List[Event] = []
        if self.prev is not None and self.start is not None:
            self._hold(t - self.prev[0])
        if self.start is not None and t - self.work_end >= self.settings.stop_after:
            events.append(Finished(Run(self.start, self.work_end, self.watt_seconds, self.cost, self.peak)))
            self.start = None
        if self.start is None and watts > self.settings.start_watts:
            self.start, self.work_end = t, t
            self.watt_seconds = self.cost = self.peak = 0.0
            self.quiet = [0.0, 0.0]
            events.append(Started(t))
        self.prev = (t, watts)
        return events

    def _hold(self, step: Optional[int]) -> None:
        """The previous row's hold, now that the next row says how long it was (None: there is none)."""
        t, watts = self.prev
        seconds = held_seconds(step)
        if not seconds:
            return  # a repeated second: the later row stands, as in the report
        joules = watts * seconds
        cost = joules / 3_600_000 * self.price(t)
        if watts >= self.settings.stop_watts:  # working: the pause before it joins the run
            self.watt_seconds += self.quiet[0] + joules
            self.cost += self.quiet[1] + cost
            self.quiet = [0.0, 0.0]
            self.peak = max(self.peak, watts)
            self.work_end = t + seconds
        else:
            self.quiet[0] += joules
            self.quiet[1] += cost


def detect(rows: Sequence[Tuple[int, float]], settings: RunSettings, price: Optional[Price] = None
           ) -> Tuple[List[Run], Optional[Run]]:
    """Every finished run of ``rows``, and the one still going at their end (None if idle)."""
    detector = RunDetector(settings, price)
    runs = [e.run for row in rows for e in detector.feed(*row) if isinstance(e, Finished)]
    if detector.running:
        detector._hold(None)  # the last row holds for one second, as the report counts a final row
        return runs, detector.current()
    return runs, None


def resume_index(rows: Sequence[Tuple[int, float]], settings: RunSettings) -> Optional[int]:
    """The first index from which a fresh detector gives the same events as one fed every earlier row.

    That holds at a row ``stop_after`` seconds or more after the first quiet
    row following every working row (a working row's hold ends by the next
    row): any run is over by then, and nothing quiet starts one. None when
    ``rows`` has no such row: look further back.
    """
    quiet_from: Optional[int] = None  # where the quiet stretch before the row began
    for i, (t, watts) in enumerate(rows):
        if quiet_from is not None and t - rows[quiet_from][0] >= settings.stop_after:
            return i
        if watts >= settings.stop_watts:
            quiet_from = None
        elif quiet_from is None:
            quiet_from = i
    return None


def suggest(rows: Sequence[Tuple[int, float]]) -> Optional[RunSettings]:
    """Thresholds from a device's own history: its resting level, its working level, its pauses.

    Resting level: the 10th percentile of the readings. Working: readings
    well above it. ``stop_watts`` sits between the rest level and the working
    level, ``start_watts`` higher; ``stop_after`` is one minute beyond the
    longest pause that is short next to the quiet between runs (the largest
    ratio between one pause length and the next in the sorted list).
    """
    if len(rows) < 60:
        return None
    levels = sorted(w for _, w in rows)
    rest = levels[len(levels) // 10]
    busy = [w for w in levels if w > rest * 3 + 5]
    if not busy:
        return None
    work = busy[len(busy) // 10]  # a low working level: a pause's heater-off drum still counts
    stop = round(rest + max(2.0, (work - rest) / 10), 1)
    start = round(max(stop * 2, rest + (work - rest) / 4), 1)
    pauses = []
    last_work: Optional[int] = None
    for t, watts in rows:
        if watts >= stop:
            if last_work is not None and t - last_work > MAX_STEP:
                pauses.append(t - last_work)
            last_work = t
    stop_after = 300
    if len(pauses) >= 2:
        pauses.sort()
        ratios = [(b / a, a) for a, b in zip(pauses, pauses[1:])]
        ratio, longest_short = max(ratios)
        if ratio >= 3:
            stop_after = int(longest_short + 60 + 59) // 60 * 60
    return RunSettings(start, stop, stop_after)
