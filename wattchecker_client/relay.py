"""The relay's desired state, sans I/O: latest command wins, nothing late, and an over-power latch.

A relay switches a heater, a fridge or a charger: a flood of commands must
not toggle it at 20 Hz, a command must not be carried out long after it was
given, and a load above its limit for too long is cut off. The policy holds
one slot per meter (the newest wanted state and when it was asked), never a
queue, so a flood costs nothing but the last word. The reader feeds it facts
(a command, a measurement, an acknowledgement, a connect), each with the
monotonic time, and asks ``due`` between two polls what to write; it never
touches a link or a clock itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

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

    def __init__(self, settings: RelaySettings, overloaded: bool = False, last_set: Optional[bool] = None) -> None:
        self.settings = settings
        self.wanted: Optional[Wanted] = None
        self.state: Optional[bool] = None  # as the meter last said; None: not known yet
        self.overloaded = overloaded
        self.last_set = last_set
        self._last_switch = -math.inf
        self._above_since: Optional[float] = None
        self._on_since: Optional[float] = None

    @property
    def memory(self) -> dict:
        """What must survive a restart: the latch, and the state ``on_connect: restore`` brings back."""
        return {"overloaded": self.overloaded, "last_set": self.last_set}

    @property
    def waiting_command(self) -> bool:
        """True while an explicit command is still to be carried out."""
        return self.wanted is not None and self.wanted.why == COMMAND

    def command(self, on: bool, now: float) -> None:
        """An explicit command replaces any older wish; an ON clears the over-power latch."""
        self.wanted = Wanted(on, now, COMMAND)
        if on:
            self.overloaded = False
            self._above_since = None

    def connected(self, now: float) -> None:
        """The link is up (first time or again): ``on_connect``, unless a command still waits.

        What the relay did while the link was down is unknown (its button, another
        client) until the first measurement says.
        """
        self.state = None
        if self.waiting_command:
            return
        rule = self.settings.on_connect
        on = {"on": True, "off": False, "restore": self.last_set}.get(rule)
        if on is None or (on and self.overloaded):
            return
        self.wanted = Wanted(on, now, ON_CONNECT_RULE)

    def seen(self, state: Optional[bool], watts: float, now: float) -> bool:
        """A measurement: the relay state it carried (None: not told) and its power. True if the latch tripped."""
        if state is not None:
            self.state = state
        tripped = self._check_power(watts, now)
        if self.state:
            if self._on_since is None:
                self._on_since = now
            if self.overloaded:  # latched: kept off, whoever switched it on
                self._want_off(now, OVERLOAD)
            elif self.settings.auto_off_after is not None and now - self._on_since >= self.settings.auto_off_after:
                self._want_off(now, AUTO_OFF)
        elif self.state is False:
            self._on_since = None
        return tripped

    def _check_power(self, watts: float, now: float) -> bool:
        limit = self.settings.max_watts
        if limit is None or watts <= limit:
            self._above_since = None
            return False
        if self._above_since is None:
            self._above_since = now
        if self.overloaded or now - self._above_since < self.settings.max_watts_for:
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
        if self.wanted is not None and self.wanted.on == state:
            self.wanted = None
        self._on_since = now if state else None

    def failed(self, now: float) -> None:
        """The meter refused the write: the wish is given up (no retry loop), and the interval still holds."""
        self._last_switch = now
        self.wanted = None
