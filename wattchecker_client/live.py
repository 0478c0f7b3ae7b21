"""The live state every output reads: per meter the newest reading, its link, and one energy counter.

Readers write it (``reading``, ``connected``, ``disconnected``): O(1) under a
lock, no I/O, so an output can never slow a reader. Outputs read consistent
copies (``snapshot``) or block until something changes (``wait``).

Energy is the integral of W with the report's rule (``datadir.held_seconds``),
over the rows as the folder's union holds them (``datadir.read_union``). It
must never go down, not even across a SIGKILL, because Home Assistant reads a
drop of a ``total_increasing`` sensor as a meter reset. So outputs show only a
*persisted* value, and only rows already on disk are counted:

* the writer tells (``durable``) each flush's rows that are new to the folder:
  written in some format and held before in none. A second the meter repeats
  (a clock set back), rows for an hour retention deleted, rows that never
  reached the disk: none of these is told, none is counted;
* rows told in time order move a running ``Accumulator``. A row not later than
  every row counted (a late row filling a gap) cannot be added so: the count
  is made again from the files (``recount``, in a thread), the rows told
  meanwhile joined to it (``Accumulator.then``);
* ``checkpoint()`` writes the count to ``energy.json`` atomically when due, and
  only then shows it. ``restore()`` at start-up takes ``energy.json`` and
  integrates the file rows newer than its last row, so a restore after any
  crash gives exactly the report's kWh of the same files;
* the value shown is the count, or the highest value shown before where the
  count went lower (a late row inside a step already counted, a damaged file
  moved to failed/): ``floor_joules`` in ``energy.json`` carries that across
  restarts, and the count overtakes it again within seconds of use.
* Counting years of files again (no ``energy.json`` yet) takes minutes on a
  Pi, so the daemon restores in a thread while the readers already read.
  Until then outputs show the saved value (``energy_known`` False when there
  is none). Closed hours are counted from their summaries (``datadir``), made
  once after an upgrade and kept past retention, so a lost ``energy.json``
  costs seconds and loses nothing.

The price is a lag: the energy shown trails the power by the writer's flush
interval plus up to one checkpoint interval.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from .clock import Clock, utc_epoch
from .protocol import Measurement
from .datadir import CURRENT_PART, held_seconds, hour_summaries, sources_for, summaries_path
from .formats import watts_as_stored
from .report import meter_rows
from .runs import Finished, Price, Run, RunDetector, RunSettings, resume_index
from .saved import SavedMeters, saved_energy
from .writer import hour_of

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL = 30.0  # seconds of host time between writes of energy.json
RECENT_RUNS = 32  # finished runs kept per meter, for the page's band and an MQTT session that was away
RUNS_LOOKBACK = 12 * 3600  # seconds of files a start without a saved run state reads back at most
EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True)
class Accumulator:
    """Watt-seconds of the rows before ``last``, and ``last`` itself (it holds until the next row).

    The total counts ``last`` for one second, as the report does for a final
    row; a later row can only add to that, so the total never decreases.
    """

    credited: float = 0.0
    last: Optional[Tuple[int, float]] = None  # (UTC epoch second, W)
    first: Optional[Tuple[int, float]] = None  # where this run of rows began, to join it to another

    def add(self, t: int, watts: float) -> "Accumulator":
        if self.last is None:
            return Accumulator(self.credited, (t, watts), self.first or (t, watts))
        # A repeated second credits nothing and the later row stands, as in the report.
        return Accumulator(self.credited + self.last[1] * held_seconds(t - self.last[0]), (t, watts), self.first)

    def then(self, later: "Accumulator") -> "Accumulator":
        """These rows followed by ``later``'s: as if every row had been added to one accumulator."""
        if later.first is None:
            return self
        bridged = self.add(*later.first)  # our last row holds until their first
        return Accumulator(bridged.credited + later.credited, later.last, bridged.first)

    @property
    def joules(self) -> float:
        return self.credited + (self.last[1] * held_seconds(None) if self.last else 0.0)

    def saved(self) -> "Accumulator":
        """As energy.json holds it: where the rows began is not kept."""
        return Accumulator(self.credited, self.last)

    def to_json(self) -> dict:
        return {"credited_joules": self.credited, "last": list(self.last) if self.last else None}

    @classmethod
    def from_json(cls, data: dict) -> "Accumulator":
        credited = float(data["credited_joules"])
        last = data.get("last")
        if credited < 0 or (last is not None and (len(last) != 2 or float(last[1]) < 0)):
            raise ValueError("negative energy or a malformed last row")
        return cls(credited, (int(last[0]), float(last[1])) if last is not None else None)


@dataclass(frozen=True)
class MeterLive:
    """What an output may show of one meter, copied at one instant."""

    name: str
    measurement: Optional[Measurement]  # the last reading (meter's UTC stamp in .time)
    received_monotonic: Optional[float]  # host monotonic time it arrived (> 10 s ago: stale)
    connected: bool
    since: Optional[dt.datetime]  # host UTC time of the last connect or disconnect
    energy_joules: float  # persisted, never decreasing
    relay: Optional[bool]  # RS-BTWATTCH2 only, else None
    energy_known: bool = True  # False while a first count of the files runs (no energy.json yet)
    overloaded: Optional[bool] = None  # an RS-BTWATTCH2's over-power latch, else None
    run: Optional[Run] = None  # the run going on (runs.py), up to its last working row; None: at rest
    runs_finished: int = 0  # runs that finished since start-up (those replayed at a restart not counted)
    recent_runs: Tuple[Tuple[int, Run], ...] = ()  # (number, run) of the last finished runs, oldest first


class _Meter:
    """One meter's mutable live fields; guarded by LiveState's lock."""

    def __init__(self, name: str, stem: str, history_seconds: int, runs: RunSettings, price: Optional[Price]) -> None:
        self.name = name
        self.detector = RunDetector(runs, price)
        self.runs_finished = 0
        self.recent_runs: Deque[Tuple[int, Run]] = collections.deque(maxlen=RECENT_RUNS)
        self.stem = stem
        self.measurement: Optional[Measurement] = None
        self.received_monotonic: Optional[float] = None
        self.connected = False
        self.since: Optional[dt.datetime] = None
        self.relay: Optional[bool] = None
        self.overloaded: Optional[bool] = None
        self.base: Optional[Accumulator] = None  # every file row up to ``upto``; None while it is counted
        self.upto: Optional[int] = None  # UTC epoch second: the base holds every file row at or before it
        self.running = Accumulator()  # rows the writer told after ``upto``, in time order
        self.newest: Optional[int] = None  # the newest second told or counted
        self.recount = False  # a row came that the running count cannot take: count the files again
        self.late = False  # late rows are being written: energy.json says so until they are counted
        self.shown = 0.0  # persisted joules, never decreasing
        self.floor = 0.0  # the highest value shown so far (the count may dip below it)
        self.saved: Optional[Tuple[float, Optional[Tuple[int, float]], float]] = None  # as last written
        self.known = False  # shown holds a saved or restored value
        # The run detector fed the rows on disk, as the energy counter is: its state goes in energy.json.
        self.durable_detector = RunDetector(self.detector.settings, self.detector.price)
        self.history: Deque[Tuple[int, float]] = collections.deque(maxlen=history_seconds or None)
        self.keep_history = history_seconds > 0


@dataclass
class LiveStats:
    checkpoints: int = 0
    checkpoint_errors: int = 0


class LiveState:
    """Shared by the readers (writing) and the outputs (reading); see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        data_dir: Path,
        meters: Dict[str, str],  # meter name -> file stem
        *,
        history_seconds: int = 0,
        data_format: Sequence[str] = ("csv",),  # the files' formats: which W they give back (for runs)
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        runs: Optional[Dict[str, RunSettings]] = None,  # meter name -> its thresholds; default: RunSettings()
        price: Optional[Price] = None,  # UTC second -> price per kWh, for a run's cost
        energy_file: Optional[SavedMeters] = None,  # energy.json as read at start (saved.py); default: data_dir's
    ) -> None:
        self.clock = clock
        self.energy_file = energy_file if energy_file is not None else saved_energy(data_dir)
        self.data_dir = data_dir
        self.stats = LiveStats()
        self._meters = {name: _Meter(name, stem, history_seconds, (runs or {}).get(name, RunSettings()), price)
                        for name, stem in meters.items()}
        self._stored_watts = watts_as_stored(data_format)  # a run's kWh integrates W as the files hold it
        self.checkpoint_interval = checkpoint_interval
        self._next_save = clock.monotonic() + checkpoint_interval
        self._version = 0
        self._changed = threading.Condition(threading.Lock())
        self._saving = threading.Lock()  # the restore thread and the supervisor both save
        self._failing = False
        self.restorer: Optional[threading.Thread] = None

    # --- writers: the reader threads ---------------------------------------------------

    def reading(self, meter: str, m: Measurement, relay: Optional[bool] = None) -> None:
        """A new reading, as the meter gave it (the energy counts it once the writer has it on disk)."""
        now = self.clock.monotonic()
        with self._changed:
            state = self._meters[meter]
            state.measurement, state.received_monotonic = m, now
            if relay is not None:
                state.relay = relay
            for event in state.detector.feed(utc_epoch(m.time), self._stored_watts(m)):
                if isinstance(event, Finished):
                    state.runs_finished += 1
                    state.recent_runs.append((state.runs_finished, event.run))
            if state.keep_history:
                state.history.append((utc_epoch(m.time), m.watts))
            self._bump()

    def late_rows_coming(self, meter: str) -> None:
        """The writer is about to write rows among rows already counted: say so in energy.json first.

        A restart after a crash that left them on disk, uncounted, must count
        the files again rather than carry on from the saved count's last row.
        """
        with self._saving:
            with self._changed:
                state = self._meters[meter]
                if state.late or state.saved is None:
                    state.late = True
                    return  # flagged already, or nothing saved to carry on from
                state.late = True
                meters = self._entries({})
            self._write(meters)

    def durable(self, meter: str, rows: Sequence[Tuple[int, float]], complete: bool = True) -> None:
        """Rows the writer made durable that the folder did not hold: (UTC epoch second, W), in time order.

        ``complete``: the flush wrote everything it had (no late row still waits).
        """
        with self._changed:
            state = self._meters[meter]
            for t, watts in rows:
                if state.newest is not None and t <= state.newest:
                    state.recount = True  # it lies among rows counted: only the files can place it
                elif not state.recount:
                    state.running = state.running.add(t, watts)
                if state.durable_detector.prev is None or t > state.durable_detector.prev[0]:
                    state.durable_detector.feed(t, watts)
                state.newest = t if state.newest is None else max(state.newest, t)
            if complete and not state.recount and state.base is not None:
                state.late = False  # the late rows, if any, were seconds the folder held: nothing to count

    def relay_latch(self, meter: str, overloaded: bool) -> None:
        """The over-power latch of a meter's relay, set or cleared."""
        with self._changed:
            self._meters[meter].overloaded = overloaded
            self._bump()

    def connected(self, meter: str) -> None:
        self._set_link(meter, True)

    def disconnected(self, meter: str) -> None:
        self._set_link(meter, False)

    def _set_link(self, meter: str, up: bool) -> None:
        now = self.clock.now()
        with self._changed:
            state = self._meters[meter]
            if state.connected != up or state.since is None:
                state.connected, state.since = up, now
                self._bump()

    def _bump(self) -> None:
        self._version += 1
        self._changed.notify_all()

    # --- readers: the outputs ----------------------------------------------------------

    def snapshot(self) -> Dict[str, MeterLive]:
        with self._changed:
            return {name: self._copy(s) for name, s in self._meters.items()}

    @staticmethod
    def _copy(s: _Meter) -> MeterLive:
        return MeterLive(s.name, s.measurement, s.received_monotonic, s.connected, s.since, s.shown, s.relay,
                         s.known, s.overloaded, s.detector.current(), s.runs_finished, tuple(s.recent_runs))

    def wait(self, version: int, timeout: float) -> int:
        """Block until something changed after ``version`` (or ``timeout``); the current version."""
        with self._changed:
            if self._version == version:
                self._changed.wait(timeout)
            return self._version

    def history(self, meter: str) -> List[Tuple[int, float]]:
        with self._changed:
            return list(self._meters[meter].history)

    # --- persistence: the daemon's supervising thread --------------------------------------

    def checkpoint(self) -> None:
        """Write energy.json when due; start a recount a late row asked for."""
        self._start_recount()
        if self.clock.monotonic() >= self._next_save:
            self.save()

    def save(self, force: bool = False) -> None:
        """Persist each known meter's count, then show it (never below what was shown).

        ``force``: at shutdown, and after a restore, even if not due.
        """
        with self._saving:
            self._next_save = self.clock.monotonic() + self.checkpoint_interval
            with self._changed:
                chosen = {name: total for name, total in self._totals().items()
                          if force or self._meters[name].saved != self._entry(name, total)}
                if not chosen and not force:
                    return
                meters = self._entries(chosen)
            if not self._write(meters):
                return
            with self._changed:
                for name, total in chosen.items():
                    state = self._meters[name]
                    state.saved = self._entry(name, total)
                    state.floor = state.shown = state.saved[2]
                if chosen:
                    self._bump()

    def _write(self, meters: Dict[str, dict]) -> bool:
        try:
            self.energy_file.replace(meters)
        except OSError as exc:
            self.stats.checkpoint_errors += 1
            if not self._failing:
                file = self.energy_file
                log.error("cannot save %s (%s); %s", file.path, exc.strerror or exc, file.unsaved)
            self._failing = True
            return False
        if self._failing:
            log.warning("%s saved again", self.energy_file.path)
        self._failing = False
        self.stats.checkpoints += 1
        return True

    def _entry(self, name: str, total: Accumulator) -> Tuple[float, Optional[Tuple[int, float]], float, bool]:
        """What energy.json holds for a meter: the count, its floor, and whether late rows await a recount."""
        state = self._meters[name]
        return total.credited, total.last, max(state.floor, total.joules), state.late or state.recount

    def _totals(self) -> Dict[str, Accumulator]:
        """Per meter whose base is known, the count: the base and the rows told since (lock held)."""
        return {name: state.base.then(state.running) for name, state in self._meters.items()
                if state.base is not None}

    def _entries(self, chosen: Dict[str, Accumulator]) -> Dict[str, dict]:
        meters = {}
        for name, s in self._meters.items():
            entry = self._entry(name, chosen[name]) if name in chosen else s.saved
            if entry is not None:
                credited, last, floor, late = entry
                meters[name] = {"stem": s.stem, **Accumulator(credited, last).to_json(), "floor_joules": floor,
                                **({"late_rows": True} if late or s.late else {})}
                if s.durable_detector.prev is not None:
                    meters[name]["runs"] = s.durable_detector.state()
        return meters

    # --- start-up ----------------------------------------------------------------------

    def restore(self, until: Optional[Dict[str, Optional[dt.datetime]]] = None, background: bool = False) -> None:
        """energy.json plus the file rows newer than its last row; without it, every file once.

        ``until``: per meter, the newest second on disk before the readers
        start (the writer's ``last_time``); later rows are told by the writer
        (``durable``). ``background``: count the closed files in a thread of
        its own (the readers need not wait); energy.json and the plain current
        files are read here, before anything appends to them.
        """
        saved = self.energy_file.entries()  # as read at start; an unreadable file: none, warned once
        for name, state in self._meters.items():
            last = None if until is None else (utc_epoch(until[name]) if until.get(name) else -1)
            self._restore_runs(state, saved.get(name), last)
        work = []
        for name, state in self._meters.items():
            entry = saved.get(name)
            start = Accumulator()
            if entry is not None and entry.get("stem") == state.stem:
                try:
                    start = Accumulator.from_json(entry)
                    floor = max(float(entry.get("floor_joules", 0.0)), start.joules)
                    state.shown = state.floor = floor
                    state.saved, state.known = (start.credited, start.last, floor, False), True
                    if entry.get("late_rows"):  # written among counted rows, maybe uncounted: count them all
                        log.info("%s: meter %s: late rows were being written; counting its files again",
                                 self.energy_file.path, name)
                        start = Accumulator()
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("%s: meter %s: unusable entry (%s); counting its files again", self.energy_file.path,
                                name, exc)
            limit = None if until is None else (utc_epoch(until[name]) if until.get(name) else -1)
            state.upto = state.newest = limit
            work.append((name, start, FileRows(self.data_dir, state.stem, start.last[0] if start.last else None,
                                               limit)))
        self._run_counts(work, background, "restored")

    def _start_recount(self) -> None:
        """Count again from the files every meter a late row made uncountable, rows told since joined on."""
        if self.restorer is not None and self.restorer.is_alive():
            return
        again: List[Tuple[str, str, Optional[int]]] = []  # (meter, stem, count up to)
        with self._changed:
            for name, state in self._meters.items():
                if state.recount and state.base is not None:
                    state.recount, state.base, state.running = False, None, Accumulator()
                    state.upto = state.newest
                    again.append((name, state.stem, state.upto))
        if again:  # the files are listed outside the lock: the readers never wait on a folder listing
            work = [(name, Accumulator(), FileRows(self.data_dir, stem, None, upto)) for name, stem, upto in again]
            self._run_counts(work, True, "counted again after a late row")

    def _run_counts(self, work: List[Tuple[str, Accumulator, "FileRows"]], background: bool, what: str) -> None:
        if background:
            self.restorer = threading.Thread(target=self._finish_restore, args=(work, what), name="energy",
                                             daemon=True)
            self.restorer.start()
        else:
            self._finish_restore(work, what)

    def _restore_runs(self, state: _Meter, entry: Optional[dict], last: Optional[int]) -> None:
        """The run detector as it stood at the newest row on disk: a run going on at a restart goes on.

        From energy.json's run state and the file rows after it; without one
        (the first start, an upgrade), from the files: an hour back, then
        further, hour by hour, until a quiet stretch shows where the detector's
        state began (runs.resume_index), at most RUNS_LOOKBACK. The runs that
        finished in the rows read are kept for the page, never announced again.
        """
        if last is not None and last < 0:
            return  # nothing on disk
        end = (last + 1) if last is not None else 2**62
        problems: List[str] = []
        try:
            if entry is None or entry.get("stem") != state.stem or entry.get("runs") is None:
                raise KeyError("runs")
            state.detector.resume(entry["runs"])
            prev = state.detector.prev
            if prev is None or (end != 2**62 and end - prev[0] > RUNS_LOOKBACK):
                raise ValueError("no rows, or too many to read")
            rows = list(meter_rows(self.data_dir, state.stem, prev[0] + 1, end, problems))
        except (KeyError, TypeError, ValueError):
            state.detector = RunDetector(state.detector.settings, state.detector.price)
            rows = self._rows_since_rest(state, end, problems)
        for t, watts in rows:
            for event in state.detector.feed(t, watts):
                if isinstance(event, Finished):
                    state.recent_runs.append((0, event.run))
        for problem in problems:
            log.warning("runs: %s", problem)
        state.durable_detector.resume(state.detector.state())  # both stand at the newest row on disk

    def _rows_since_rest(self, state: _Meter, end: int, problems: List[str]) -> List[Tuple[int, float]]:
        """The file rows from the first point, from an hour or more and at most RUNS_LOOKBACK before ``end``,
        where no run can be going on."""
        if end == 2**62:
            end = utc_epoch(self.clock.now()) + 1
        start = (end - 3600) - (end - 3600) % 3600  # the page's hour at least: its runs are shown as bands
        rows = list(meter_rows(self.data_dir, state.stem, start, end, problems))
        while True:
            index = resume_index(rows, state.detector.settings)
            if index is not None or end - start >= RUNS_LOOKBACK:
                return rows[index or 0:]
            start -= 3600
            rows = list(meter_rows(self.data_dir, state.stem, start, start + 3600, problems)) + rows

    def _finish_restore(self, work: List[Tuple[str, Accumulator, "FileRows"]], what: str = "restored") -> None:
        for name, start, rows in work:
            base = rows.fold(start)
            with self._changed:
                state = self._meters[name]
                state.base = base.saved()
                state.known = True
                state.late = state.late and state.recount  # counted now, unless more came meanwhile
                self._bump()
            log.info("%s: energy %.3f kWh %s (%d rows counted from the files)", name, base.joules / 3_600_000,
                     what, rows.count)
        self.save(force=True)
        for _, _, rows in work:
            rows.backfill()


def rounded_up(total: Accumulator, terms: int) -> Accumulator:
    """``total`` raised by the most that summing ``terms`` rows in another order can round it down.

    Summaries add an hour's rows before adding the hour, so their float sum can
    fall a few ulps below the row-by-row sum a previous run showed; Prometheus
    would read that as a counter reset. Every term is non-negative, so the
    error is at most ``terms`` times the unit round-off of the total.
    """
    if not terms:
        return total
    return Accumulator(total.credited * (1 + terms * 2.0 ** -52), total.last, total.first)


class FileRows:
    """One meter's file rows after ``after`` and up to ``until`` (UTC epoch seconds), in time order.

    Made before the readers start: it lists the files and reads the current
    hour's plain files then (the writer appends to those, and closes them);
    the closed ``.gz`` files it reads later never change.
    """

    def __init__(self, data_dir: Path, stem: str, after: Optional[int], until: Optional[int]) -> None:
        self.after, self.until = after, until
        self.count = 0
        self.problems: List[str] = []
        self.data_dir, self.stem = data_dir, stem
        first_hour = hour_of(EPOCH + dt.timedelta(seconds=after)) if after is not None else None
        self.upgrade = not summaries_path(data_dir, stem).exists()  # a release before summaries wrote these files
        self.sources = sources_for(data_dir, stem, since=first_hour)  # a restart holds only the hours since
        self._first_hour = first_hour
        self.hours = [h for h in sorted(self.sources.by_hour) if first_hour is None or h >= first_hour]
        # The hours of the plain files, read whole now (the writer appends to those files, and closes them).
        self.plain: Dict[dt.datetime, List[Tuple[int, float]]] = {
            hour: self.sources.rows(hour) for hour in self.hours if CURRENT_PART in self.sources.by_hour[hour]}
        for hour in self.plain:
            self.sources.by_hour.pop(hour, None)

    def fold(self, base: Accumulator) -> Accumulator:
        """``base`` followed by these rows: a closed hour from its summary when it lies wholly
        inside the span, else from its rows. Makes and saves the summaries still missing."""
        summaries = hour_summaries(self.data_dir, self.stem, self.sources, only=self.hours, since=self._first_hour)
        summed = 0
        for hour in sorted(set(self.hours) | {h for h in summaries if self._first_hour is None or h >= self._first_hour}):
            start = utc_epoch(hour)
            summary = None if hour in self.plain else summaries.get(hour)
            if summary is not None and self._inside(start + summary.first[0]) and self._inside(start + summary.last[0]):
                base = base.add(start + summary.first[0], summary.first[1])  # the previous row holds until it
                base = Accumulator(base.credited + summary.watt_seconds, (start + summary.last[0], summary.last[1]),
                                   base.first)
                self.count += summary.rows
                summed += summary.rows
            else:
                for t, watts in self._hour_rows(hour, start):
                    base = base.add(t, watts)
        for problem in self.problems:
            log.warning("energy restore: %s", problem)
        return rounded_up(base, summed)

    def backfill(self) -> None:
        """After an upgrade, the summaries of the older hours too, once the energy is known."""
        if not self.upgrade:
            return
        every = sources_for(self.data_dir, self.stem) if self._first_hour is not None else self.sources
        hour_summaries(self.data_dir, self.stem, every, only=[h for h in every.by_hour if h not in self.plain])

    def _inside(self, t: int) -> bool:
        return (self.after is None or t > self.after) and (self.until is None or t <= self.until)

    def _hour_rows(self, hour: dt.datetime, start: int) -> Iterator[Tuple[int, float]]:
        rows = self.plain[hour] if hour in self.plain else self.sources.rows(hour)
        for second, watts in rows:
            if self._inside(start + second):
                self.count += 1
                yield start + second, watts
