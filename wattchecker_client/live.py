"""The live state every output reads: per meter the newest reading, its link, and one energy counter.

Readers write it (``reading``, ``connected``, ``disconnected``): O(1) under a
lock, no I/O, so an output can never slow a reader. Outputs read consistent
copies (``snapshot``) or block until something changes (``wait``).

Energy is the integral of W with the report's rule (``report.held_seconds``),
over the rows as the files hold them. It must never go down, not even across
a SIGKILL, because Home Assistant reads a drop of a ``total_increasing``
sensor as a meter reset. So outputs show only a *persisted* value, and only
rows already on disk are persisted:

* every row the readers hand over moves a running ``Accumulator``;
* ``checkpoint()`` notes (row count, accumulator) pairs; once the writer says
  that many rows are on disk (``durable_rows``), the newest such pair is
  written to ``energy.json`` atomically, and only then shown;
* ``restore()`` at start-up takes ``energy.json`` and integrates the file rows
  newer than its last row. Rows on disk never vanish and the checkpoint only
  holds rows on disk, so a restore after any crash gives at least what was
  shown, and exactly the report's kWh of the same files.

The price is a lag: the energy shown trails the power by the writer's flush
interval plus up to one checkpoint interval.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

from .clock import Clock, utc_epoch
from .formats import FORMATTERS
from .protocol import Measurement
from .report import held_seconds, parse_line, sources_for
from .writer import atomic_write, hour_of

log = logging.getLogger(__name__)

STATE_FILE = "energy.json"
STATE_VERSION = 1
CHECKPOINT_INTERVAL = 30.0  # seconds of host time between writes of energy.json
MAX_CANDIDATES = 4096  # checkpoints waiting for the writer; beyond this the oldest are dropped
EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True)
class Accumulator:
    """Watt-seconds of the rows before ``last``, and ``last`` itself (it holds until the next row).

    The total counts ``last`` for one second, as the report does for a final
    row; a later row can only add to that, so the total never decreases.
    """

    credited: float = 0.0
    last: Optional[Tuple[int, float]] = None  # (UTC epoch second, W)

    def add(self, t: int, watts: float) -> "Accumulator":
        if self.last is None:
            return Accumulator(self.credited, (t, watts))
        # A repeated second credits nothing and the later row stands, as in the report.
        return Accumulator(self.credited + self.last[1] * held_seconds(t - self.last[0]), (t, watts))

    @property
    def joules(self) -> float:
        return self.credited + (self.last[1] * held_seconds(None) if self.last else 0.0)

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


class _Meter:
    """One meter's mutable live fields; guarded by LiveState's lock."""

    def __init__(self, name: str, stem: str, history_seconds: int) -> None:
        self.name = name
        self.stem = stem
        self.measurement: Optional[Measurement] = None
        self.received_monotonic: Optional[float] = None
        self.connected = False
        self.since: Optional[dt.datetime] = None
        self.relay: Optional[bool] = None
        self.running = Accumulator()  # every row received
        self.rows = 0  # rows received since start-up, the writer counts the same rows
        self.shown = Accumulator()  # persisted
        self.candidates: Deque[Tuple[int, Accumulator]] = collections.deque(maxlen=MAX_CANDIDATES)
        self.history: Deque[Tuple[int, float]] = collections.deque(maxlen=history_seconds or None)
        self.keep_history = history_seconds > 0


@dataclass
class LiveStats:
    checkpoints: int = 0
    checkpoint_errors: int = 0


def watts_as_stored(data_format: Sequence[str]) -> Callable[[Measurement], float]:
    """W of a reading exactly as the report will read it back from the files (CSV keeps 2 decimals)."""
    fmt = "csv" if "csv" in data_format else "json"
    formatter = FORMATTERS[fmt]
    return lambda m: parse_line(formatter(m))[1]


class LiveState:
    """Shared by the readers (writing) and the outputs (reading); see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        data_dir: Path,
        meters: Dict[str, str],  # meter name -> file stem
        *,
        history_seconds: int = 0,
        data_format: Sequence[str] = ("csv",),
        durable_rows: Optional[Callable[[str], int]] = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        self.clock = clock
        self.path = data_dir / STATE_FILE
        self.data_dir = data_dir
        self.stats = LiveStats()
        self._meters = {name: _Meter(name, stem, history_seconds) for name, stem in meters.items()}
        self._stored_watts = watts_as_stored(data_format)
        # Without a writer to ask, every row counts as on disk (tools and tests).
        self._durable_rows = durable_rows or (lambda name: self._meters[name].rows)
        self.checkpoint_interval = checkpoint_interval
        self._next_save = clock.monotonic() + checkpoint_interval
        self._version = 0
        self._changed = threading.Condition(threading.Lock())
        self._failing = False

    # --- writers: the reader threads ---------------------------------------------------

    def reading(self, meter: str, m: Measurement, relay: Optional[bool] = None) -> None:
        """A new row (the writer gets the same rows, in the same order)."""
        t, watts = utc_epoch(m.time), self._stored_watts(m)
        now = self.clock.monotonic()
        with self._changed:
            state = self._meters[meter]
            state.measurement, state.received_monotonic = m, now
            if relay is not None:
                state.relay = relay
            state.running = state.running.add(t, watts)
            state.rows += 1
            if state.keep_history:
                state.history.append((t, m.watts))
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
        return MeterLive(s.name, s.measurement, s.received_monotonic, s.connected, s.since, s.shown.joules, s.relay)

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
        """Note where each meter is; write energy.json when due and the writer has caught up."""
        self._note()
        if self.clock.monotonic() >= self._next_save:
            self.save()

    def _note(self) -> None:
        with self._changed:
            for state in self._meters.values():
                if not state.candidates or state.candidates[-1][0] != state.rows:
                    state.candidates.append((state.rows, state.running))

    def save(self, force: bool = False) -> None:
        """Persist the newest state whose rows are all on disk, then show it.

        ``force``: at shutdown, after the writer's last flush, so everything
        received counts (if the writer says it is on disk).
        """
        self._next_save = self.clock.monotonic() + self.checkpoint_interval
        if force:
            self._note()
        chosen = self._durable_states()
        if not chosen and not force:
            return
        with self._changed:
            document = self._document(chosen)
        try:
            atomic_write(self.path, json.dumps(document, indent=1).encode(), compress=False)
        except OSError as exc:
            self.stats.checkpoint_errors += 1
            if not self._failing:
                log.error("cannot save %s (%s); energy shown stays put until it can", self.path, exc.strerror or exc)
            self._failing = True
            return
        if self._failing:
            log.warning("%s saved again", self.path)
        self._failing = False
        self.stats.checkpoints += 1
        with self._changed:
            for name, acc in chosen.items():
                self._meters[name].shown = acc
            if chosen:
                self._bump()

    def _durable_states(self) -> Dict[str, Accumulator]:
        """Per meter, the newest noted state that holds only rows on disk and moves the energy on."""
        chosen: Dict[str, Accumulator] = {}
        for name, state in self._meters.items():
            durable = self._durable_rows(name)
            with self._changed:
                best = None
                while state.candidates and state.candidates[0][0] <= durable:
                    best = state.candidates.popleft()[1]
                if best is not None and best != state.shown:
                    chosen[name] = best
        return chosen

    def _document(self, chosen: Dict[str, Accumulator]) -> dict:
        meters = {}
        for name, s in self._meters.items():
            acc = chosen.get(name, s.shown)
            meters[name] = {"stem": s.stem, **acc.to_json()}
        return {"version": STATE_VERSION, "meters": meters}

    # --- start-up ----------------------------------------------------------------------

    def restore(self) -> None:
        """energy.json plus the file rows newer than its last row; without it, every file once."""
        saved = self._read_state_file()
        changed = False
        for name, state in self._meters.items():
            entry = saved.get(name)
            acc = Accumulator()
            if entry is not None and entry.get("stem") == state.stem:
                try:
                    acc = Accumulator.from_json(entry)
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("%s: meter %s: unusable entry (%s); counting its files again", self.path, name, exc)
            before = acc
            acc = self._integrate_files(state.stem, acc)
            changed |= acc != before or entry is None
            state.running = state.shown = acc
            log.info("%s: energy %.3f kWh restored", name, acc.joules / 3_600_000)
        if changed:
            self.save(force=True)

    def _read_state_file(self) -> Dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION or not isinstance(data.get("meters"), dict):
                raise ValueError(f"not a version {STATE_VERSION} energy file")
            return data["meters"]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s: unreadable (%s); counting energy from the data files", self.path, exc)
            return {}

    def _integrate_files(self, stem: str, acc: Accumulator) -> Accumulator:
        """Move ``acc`` on by every row in the files newer than its last row."""
        after = acc.last[0] if acc.last else None
        first_hour = hour_of(EPOCH + dt.timedelta(seconds=after)) if after is not None else None
        sources = sources_for(self.data_dir, stem)
        problems: List[str] = []
        for hour in sorted(sources.by_hour):
            if first_hour is not None and hour < first_hour:
                continue
            start = utc_epoch(hour)
            for second, watts in sources.rows(hour, problems):
                t = start + second
                if after is None or t > after:
                    acc = acc.add(t, watts)
        for problem in problems:
            log.warning("energy restore: %s", problem)
        return acc
