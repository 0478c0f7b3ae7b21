"""The one seam for time: every clock read and every sleep goes through a Clock.

Production code takes a ``Clock``; tests hand in a ``FakeClock`` and drive
hours of behaviour in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import random
import threading
import time
from typing import Any, Optional

from .clocksync import SyncCheck

log = logging.getLogger(__name__)


EPOCH = dt.datetime(1970, 1, 1)
SECOND = dt.timedelta(seconds=1)


def utc_epoch(when: dt.datetime) -> int:
    """Whole seconds since 1970 of a naive UTC datetime (what the meter and files use)."""
    return (when - EPOCH) // SECOND  # integer arithmetic: calendar.timegm would cost the service 0.3 MB


def time_zone(name: str) -> dt.tzinfo:
    """A zone by its IANA name; ValueError with a hint for a wrong one."""
    import zoneinfo  # here, not at the top: the service itself never needs a zone (files are UTC)

    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use a name such as Asia/Tokyo)") from None


class Clock:
    """Real time: wall clock in UTC, a monotonic clock, and interruptible sleep."""

    _sync: Optional[SyncCheck] = None  # made at the first question

    def now(self) -> dt.datetime:
        """Naive UTC wall-clock time (the meter and the files speak naive UTC)."""
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

    def monotonic(self) -> float:
        return time.monotonic()

    def synchronised(self) -> bool:
        """Whether someone vouches for the wall clock (see clocksync); False where nobody can tell."""
        if self._sync is None:
            self._sync = SyncCheck()
        return self._sync.synchronised(self.monotonic())

    def sleep(self, seconds: float, stop: Optional[threading.Event] = None) -> bool:
        """Sleep, waking early if ``stop`` is set. Returns True if stopped."""
        if stop is None:
            if seconds > 0:
                time.sleep(seconds)
            return False
        return stop.wait(max(0.0, seconds))

    def get(self, q: "queue.Queue[Any]", timeout: float) -> Optional[Any]:
        """The next queue item, or None after ``timeout`` seconds of nothing."""
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            return None


class FakeClock(Clock):
    """A clock that only moves when slept on or advanced; sleeps return at once.

    Its wall clock can also be stepped alone (as NTP or ``date -s`` does) and
    its synchronised flag set, to play a Raspberry Pi's boot.
    """

    def __init__(self, start: dt.datetime = dt.datetime(2019, 9, 7, 9, 0, 0), synchronised: bool = True) -> None:
        self._now = start
        self._mono = 1000.0
        self._synchronised = synchronised
        self._lock = threading.Lock()

    def synchronised(self) -> bool:
        with self._lock:
            return self._synchronised

    def set_synchronised(self, synchronised: bool) -> None:
        with self._lock:
            self._synchronised = synchronised

    def step(self, seconds: float) -> None:
        """Move the wall clock only: the monotonic clock does not see a step."""
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)
            self._mono += seconds

    def sleep(self, seconds: float, stop: Optional[threading.Event] = None) -> bool:
        if stop is not None and stop.is_set():
            return True
        if seconds > 0:
            self.advance(seconds)
        return stop.is_set() if stop is not None else False

    def get(self, q: "queue.Queue[Any]", timeout: float) -> Optional[Any]:
        try:
            return q.get_nowait()
        except queue.Empty:
            self.advance(timeout)
            return None


class Backoff:
    """Exponential backoff with full jitter between ``initial`` and ``maximum`` seconds."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0, rng: Optional[random.Random] = None):
        self.initial = initial
        self.maximum = maximum
        self.rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** self.attempt))
        self.attempt += 1
        return self.rng.uniform(self.initial / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
