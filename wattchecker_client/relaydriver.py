"""Carrying one meter's relay policy out: its lock, the callers' futures, the writes between polls.

``RelayPolicy`` (relay.py) decides; this driver is the one place that shares
it between threads. Any thread may ``request`` a state and gets a Future; the
reader thread calls ``seen`` with each measurement and ``drive`` between two
polls, and the driver does what the policy says: at most one write, then the
futures of the command settled, and the relay's memory handed on to be saved.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import TYPE_CHECKING, Callable, List, Optional, Protocol

from .clock import Clock, utc_epoch
from .protocol import ProtocolError
from .relay import RelayPolicy, RelayStale, RelaySuperseded
from .transport import LinkError

if TYPE_CHECKING:  # concurrent.futures costs the service 0.9 MB: imported when a relay is switched
    from concurrent.futures import Future

# The reader's log: these lines are the meter's, and users' filters know them by its name.
log = logging.getLogger("wattchecker_client.meter")


class Switch(Protocol):
    """What the driver needs of a session: a write that returns the acknowledged state."""

    def switch_relay(self, on: Optional[bool]) -> bool: ...


def failed(exc: Exception) -> "Future[bool]":
    """A Future that already holds ``exc``."""
    from concurrent.futures import Future

    future: "Future[bool]" = Future()
    future.set_exception(exc)
    return future


def word(on: bool) -> str:
    return "on" if on else "off"


class RelayDriver:
    """One meter's relay: the policy behind a lock, the futures of its callers, and the writes it asks for."""

    def __init__(self, name: str, policy: RelayPolicy, clock: Clock, stop: threading.Event,
                 on_memory: Callable[[dict], None]) -> None:
        self.name = name
        self.policy = policy
        self.clock = clock
        self.stop = stop
        self.on_memory = on_memory  # the latch or the last set state changed: save it (relay.json)
        self.state: Optional[bool] = None  # as the last measurement or acknowledgement said
        self._memory = policy.memory  # as last handed on to be saved
        self._lock = threading.Lock()
        self._waiters: List["Future[bool]"] = []  # the futures of the newest command only
        self._readers: List["Future[bool]"] = []

    def request(self, on: Optional[bool]) -> "Future[bool]":
        """Ask for a state (None: read it) from any thread; the newest command replaces a waiting one."""
        from concurrent.futures import Future

        if self.stop.is_set():
            return failed(LinkError(f"{self.name}: the reader is stopping"))
        future: "Future[bool]" = Future()
        with self._lock:
            if on is None:
                self._readers.append(future)
                return future
            self.policy.command(on, self.clock.monotonic())
            superseded, self._waiters = self._waiters, [future]
        _fail_all(superseded, RelaySuperseded(f"{self.name}: relay {word(on)} replaced an older command"))
        return future

    def connected(self) -> None:
        with self._lock:
            self.policy.connected(self.clock.monotonic())

    def seen(self, state: Optional[bool], watts: float, stamp: dt.datetime) -> None:
        """A measurement told the relay state (None: it did not), the power and the meter's time; reads get it."""
        with self._lock:
            tripped = self.policy.seen(state, watts, self.clock.monotonic(), utc_epoch(stamp) + stamp.microsecond / 1e6)
        if tripped:
            settings = self.policy.settings
            log.warning("%s: over %g W for %g s: switching the relay off and latching 'overloaded' until "
                        "an explicit ON", self.name, settings.max_watts, settings.max_watts_for)
        self._save_memory()
        if state is None:
            return
        self.state = state
        with self._lock:
            readers, self._readers = self._readers, []
        _settle(readers, state)

    def meter_clock_moved(self, by: float) -> None:
        """The reader set the meter's clock ``by`` seconds: the relay's on-time keeps its count."""
        with self._lock:
            self.policy.meter_clock_moved(by)
        self._save_memory()

    def drive(self, session: Switch) -> None:
        """Carry out the wanted state, if one is due: at most one write between two polls."""
        now = self.clock.monotonic()
        with self._lock:
            decision = self.policy.due(now)
        if decision.dropped is not None:
            self._dropped(decision.dropped.on, now - decision.dropped.asked)
        elif decision.settled:
            self._save_memory()
            self._settle_waiters()
        if decision.switch is None:
            return
        try:
            state = session.switch_relay(decision.switch.on)
        except ProtocolError as exc:  # the meter refused: the wish is given up, not retried
            log.warning("%s: relay %s failed: %s", self.name, word(decision.switch.on), exc)
            with self._lock:
                self.policy.failed(now)
            self._settle_waiters(exc)
            return
        log.info("%s: relay switched %s (%s)", self.name, word(state), decision.switch.why)
        self.state = state
        with self._lock:
            self.policy.switched(state, now)
        self._save_memory()
        self._settle_waiters()

    def close(self, exc: Exception) -> None:
        """When the reader ends, no request is left hanging: each fails with ``exc``."""
        with self._lock:
            pending = self._readers + self._waiters
            self._readers, self._waiters = [], []
        _fail_all(pending, exc)

    def _save_memory(self) -> None:
        """Hand the relay's memory on when it changed (a latch, a state set, the on-time's start)."""
        with self._lock:
            memory = self.policy.memory
        if memory == self._memory:
            return
        if self._memory["overloaded"] and not memory["overloaded"]:
            log.warning("%s: relay ON asked: the over-power latch is cleared", self.name)
        self._memory = memory
        self.on_memory(memory)

    def _dropped(self, on: bool, age: float) -> None:
        log.warning("%s: relay %s dropped: asked %.0f s ago, older than %g s by the time the meter could "
                    "be reached", self.name, word(on), age, self.policy.settings.max_age)
        self._settle_waiters(RelayStale(f"{self.name}: relay {word(on)} asked {age:.0f} s ago: too late, dropped"))

    def _settle_waiters(self, exc: Optional[Exception] = None) -> None:
        """The command's Futures once its wish is gone: the state the meter acknowledged, or ``exc``."""
        with self._lock:
            if self.policy.waiting_command:
                return
            waiters, self._waiters = self._waiters, []
        if exc is not None:
            _fail_all(waiters, exc)
        else:
            _settle(waiters, self.state)


class NoRelay:
    """The driver of a meter without a relay: each request fails at once with ``error()``; facts are ignored."""

    state: Optional[bool] = None

    def __init__(self, error: Callable[[], Exception]) -> None:
        self.error = error

    def request(self, on: Optional[bool]) -> "Future[bool]":
        return failed(self.error())

    def connected(self) -> None:
        pass

    def seen(self, state: Optional[bool], watts: float, stamp: dt.datetime) -> None:
        pass

    def meter_clock_moved(self, by: float) -> None:
        pass

    def drive(self, session: Switch) -> None:
        pass

    def close(self, exc: Exception) -> None:
        pass


def _settle(futures: List["Future[bool]"], state: Optional[bool]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(state)


def _fail_all(futures: List["Future[bool]"], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
