"""The relay's desired state, sans I/O: latest command wins, nothing late, and an over-power latch.

A relay switches a heater, a fridge or a charger: a flood of commands must
not toggle it at 20 Hz, a command must not be carried out long after it was
given, and a load above its limit for too long is cut off. The policy holds
one slot per meter (the newest wanted state and when it was asked), never a
queue, so a flood costs nothing but the last word. The reader feeds it facts
(a command, a measurement, an acknowledgement, a connect), each with the
monotonic time, and asks ``due`` between two polls what to write; it never
touches a link or a clock itself.

The timers run on the meter's evidence: over-power counts readings over the
limit without a break, by the meter's own seconds (a reconnect, or readings
further apart than two polls, starts the count again), and ``auto_off_after``
counts from the meter second the relay was first seen on, which is saved
(``memory``), so a restart or a reboot carries the count on. Only a command
carried out changes the latch: one dropped as too old changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

# A command older than this by the time the link can carry it is dropped.
COMMAND_MAX_AGE = 30.0
MIN_INTERVAL = 2.0
ON_CONNECT = ("keep", "on", "off", "restore")

# Why a state is wanted: an explicit command (MQTT), or the policy's own rules.
COMMAND, ON_CONNECT_RULE, OVERLOAD, AUTO_OFF = "command", "on_connect", "overload", "auto_off_after"


class RelayStale(Exception):
    """A command dropped because it was older than ``COMMAND_MAX_AGE`` when the link could carry it."""


class RelaySuperseded(Exception):
    """A command replaced by a newer one before it was carried out."""


@dataclass(frozen=True)
class RelaySettings:
    """A device's ``relay:`` section."""

    min_interval: float = MIN_INTERVAL
    max_watts: Optional[float] = None  # None: no over-power cut-off
    max_watts_for: float = 10.0
    on_connect: str = "keep"
    auto_off_after: Optional[float] = None
    max_age: float = COMMAND_MAX_AGE


def describe(settings: RelaySettings) -> str:
    """The relay: section in words, for check-config."""
    cut = (f"off above {settings.max_watts:g} W for {settings.max_watts_for:g} s (latched until an ON)"
           if settings.max_watts is not None else "no over-power cut-off")
    auto = f"off {settings.auto_off_after:g} s after any ON" if settings.auto_off_after is not None else "no auto-off"
    return (f"at most one switch per {settings.min_interval:g} s, commands older than {settings.max_age:g} s "
            f"dropped, {cut}, on connect: {settings.on_connect}, {auto}")


@dataclass(frozen=True)
class Wanted:
    on: bool
    asked: float  # monotonic seconds
    why: str


@dataclass(frozen=True)
class Decision:
    """What to do now: write ``switch``; or nothing, because the wish was ``dropped`` or is ``settled``."""

    switch: Optional[Wanted] = None
    dropped: Optional[Wanted] = None
    settled: bool = False


class RelayPolicy:
    """One meter's relay: the wanted state, the latch, and what the service last set (both persisted)."""

    def __init__(self, settings: RelaySettings, overloaded: bool = False, last_set: Optional[bool] = None,
                 on_since: Optional[float] = None, poll_interval: float = 1.0) -> None:
        self.settings = settings
        self.wanted: Optional[Wanted] = None
        self.state: Optional[bool] = None  # as the meter last said; None: not known yet
        self.overloaded = overloaded
        self.last_set = last_set
        # Readings further apart than this (meter seconds) are not one stretch: one dropped poll is allowed.
        self.max_step = 2 * max(1.0, poll_interval)
        self._last_switch = -math.inf
        self._above_since: Optional[float] = None  # meter seconds (UTC epoch), as every time below
        self._on_since = on_since
        self._last_at: Optional[float] = None  # the last reading's stamp; None after a (re)connect
        self._last_seen = 0.0  # the monotonic time of that reading

    @classmethod
    def restored(cls, settings: RelaySettings, memory: Mapping[str, Any], poll_interval: float = 1.0) -> "RelayPolicy":
        """A policy that carries on from ``memory`` as an earlier run saved it; a value of the wrong type is ignored."""
        last_set, on_since = memory.get("last_set"), memory.get("on_since")
        return cls(settings, memory.get("overloaded") is True, last_set if isinstance(last_set, bool) else None,
                   on_since if isinstance(on_since, (int, float)) and not isinstance(on_since, bool) else None,
                   poll_interval)

    @property
    def memory(self) -> dict:
        """What must survive a restart: the latch, the state ``on_connect: restore`` brings back, the on-time."""
        memory: dict = {"overloaded": self.overloaded, "last_set": self.last_set}
        if self._on_since is not None:
            memory["on_since"] = self._on_since  # the meter second the relay was first seen on
        return memory

    @property
    def waiting_command(self) -> bool:
        """True while an explicit command is still to be carried out."""
        return self.wanted is not None and self.wanted.why == COMMAND

    def command(self, on: bool, now: float) -> None:
        """An explicit command replaces any older wish; an ON clears the over-power latch once carried out."""
        self.wanted = Wanted(on, now, COMMAND)

    def connected(self, now: float) -> None:
        """The link is up (first time or again): ``on_connect``, unless a command still waits.

        What the relay did while the link was down is unknown (its button, another
        client) until the first measurement says.
        """
        self.state = None
        self._last_at = None  # a reconnect breaks a stretch of readings
        if self.waiting_command:
            return
        rule = self.settings.on_connect
        on = {"on": True, "off": False, "restore": self.last_set}.get(rule)
        if on is None or (on and self.overloaded):
            return
        self.wanted = Wanted(on, now, ON_CONNECT_RULE)

    def seen(self, state: Optional[bool], watts: float, now: float, at: float) -> bool:
        """A measurement stamped ``at`` by the meter: the relay state it carried (None: not told) and its power.

        True if the latch tripped.
        """
        if state is not None:
            self.state = state
        stretch = self._last_at is not None and 0 <= at - self._last_at <= self.max_step
        self._last_at, self._last_seen = at, now
        tripped = self._check_power(watts, now, at, stretch)
        if self.state:
            if self._on_since is None:
                self._on_since = at
            if self.overloaded and not self.waiting_command:  # latched: kept off, whoever switched it on
                self._want_off(now, OVERLOAD)
            elif self.settings.auto_off_after is not None and at - self._on_since >= self.settings.auto_off_after:
                self._want_off(now, AUTO_OFF)
        elif self.state is False:
            self._on_since = None
        return tripped

    def meter_clock_moved(self, by: float) -> None:
        """The service set the meter's clock ``by`` seconds: the on-time keeps its count; a stretch is broken."""
        if self._on_since is not None:
            self._on_since += by
        self._last_at = None

    def _check_power(self, watts: float, now: float, at: float, stretch: bool) -> bool:
        limit = self.settings.max_watts
        if limit is None or watts <= limit:
            self._above_since = None
            return False
        if self._above_since is None or not stretch:
            self._above_since = at
        if self.overloaded or at - self._above_since < self.settings.max_watts_for:
            return False
        self.overloaded = True
        self.wanted = Wanted(False, now, OVERLOAD)
        return True

    def _want_off(self, now: float, why: str) -> None:
        if self.wanted is None or self.wanted.on:
            self.wanted = Wanted(False, now, why)

    def due(self, now: float) -> Decision:
        """Between two polls: what to write now, if anything. At most one switch per ``min_interval``."""
        wanted = self.wanted
        if wanted is None:
            return Decision()
        if wanted.why == COMMAND and now - wanted.asked > self.settings.max_age:
            self.wanted = None
            return Decision(dropped=wanted)
        if wanted.on == self.state:  # already so: nothing to write
            self.wanted = None
            self._carried_out(wanted)
            return Decision(settled=True)
        if self.state is None and wanted.why != COMMAND:  # a rule waits for a measurement to know
            return Decision()
        if now - self._last_switch < self.settings.min_interval:
            return Decision()
        return Decision(switch=wanted)

    def switched(self, state: bool, now: float) -> None:
        """The meter acknowledged a write: its state now."""
        self._last_switch = now
        self.state = self.last_set = state
        wanted = self.wanted
        if wanted is not None and wanted.on == state:
            self.wanted = None
            self._carried_out(wanted)
        # On since the meter second of the write: the last stamp, moved on by the host's seconds since.
        self._on_since = self._last_at + (now - self._last_seen) if state and self._last_at is not None else None

    def _carried_out(self, wanted: Wanted) -> None:
        if wanted.why == COMMAND and wanted.on:  # an explicit ON, done: the over-power latch is cleared
            self.overloaded = False
            self._above_since = None

    def failed(self, now: float) -> None:
        """The meter refused the write: the wish is given up (no retry loop), and the interval still holds."""
        self._last_switch = now
        self.wanted = None
