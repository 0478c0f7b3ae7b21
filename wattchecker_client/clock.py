"""The one seam for time: every clock read and every sleep goes through a Clock.

Production code takes a ``Clock``; tests hand in a ``FakeClock`` and drive
hours of behaviour in milliseconds.
"""

from __future__ import annotations

import calendar
import datetime as dt
import queue
import threading
import time
from typing import Any, Optional

try:
    import zoneinfo
except ImportError:  # pragma: no cover - Python 3.9 has it; keep the error clear anyway
    zoneinfo = None  # type: ignore[assignment]


def utc_epoch(when: dt.datetime) -> int:
    """Whole seconds since 1970 of a naive UTC datetime (what the meter and files use)."""
    return calendar.timegm(when.timetuple())


def time_zone(name: str) -> dt.tzinfo:
    """A zone by its IANA name; ValueError with a hint for a wrong one."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use a name such as Asia/Tokyo)") from None


class Clock:
    """Real time: wall clock in UTC, a monotonic clock, and interruptible sleep."""

    def now(self) -> dt.datetime:
        """Naive UTC wall-clock time (the meter and the files speak naive UTC)."""
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

    def monotonic(self) -> float:
        return time.monotonic()

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
    """A clock that only moves when slept on or advanced; sleeps return at once."""

    def __init__(self, start: dt.datetime = dt.datetime(2019, 9, 7, 9, 0, 0)) -> None:
        self._now = start
        self._mono = 1000.0
        self._lock = threading.Lock()

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
