"""The one seam for time: every clock read and every sleep goes through a Clock.

Production code takes a ``Clock``; tests hand in a ``FakeClock`` and drive
hours of behaviour in milliseconds.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import functools
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

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


# adjtimex(2): the kernel's view of its clock discipline. timesyncd, chrony and
# ntpd all report to it; a clock set by hand or restored at boot (fake-hwclock)
# is marked unsynchronised, with the maximum error at its 16 s ceiling.
STA_UNSYNC = 0x0040
TIME_ERROR = 5
NTP_PHASE_LIMIT_US = 16_000_000
# systemd-timesyncd's run-time folder (there while it runs) and the file it
# touches at each synchronisation, for programs that cannot ask the kernel.
TIMESYNCD_RUN_DIR = "/run/systemd/timesync"


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` as the C library's ``adjtimex`` symbol takes it.

    Mostly ``long``s, so ctypes lays it out as the compiler does: 208 bytes on
    64-bit Linux, 128 on 32-bit ARM, where the plain ``adjtimex`` symbol keeps
    the 32-bit ``long`` layout even in a 64-bit-time_t build (those call
    ``__adjtimex64``). The trailing padding lets the kernel write the whole struct.
    """

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class KernelClock:
    """What adjtimex says of the system clock."""

    state: int  # the return value: TIME_OK (0) ... TIME_ERROR (5)
    status: int  # STA_* flags
    maxerror_us: int
    tick_us: int  # microseconds between clock ticks: 1e6 / HZ
    seconds: int  # the wall clock, whole seconds since 1970

    @property
    def synchronised(self) -> bool:
        """As timedatectl's "System clock synchronized": a daemon keeps the error under 16 s.

        STA_UNSYNC alone is not enough: chrony keeps it set when it maintains
        the RTC itself (rtcfile), so the kernel's 11-minute mode stays off.
        """
        return not self.status & STA_UNSYNC or self.maxerror_us < NTP_PHASE_LIMIT_US


@functools.lru_cache(maxsize=None)
def _adjtimex() -> Optional[Callable[[Any], int]]:
    try:
        function = ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):  # not Linux: no adjtimex
        return None
    function.argtypes = [ctypes.POINTER(_Timex)]
    function.restype = ctypes.c_int
    return function


def timesyncd_synchronised(run_dir: Optional[str] = None) -> Optional[bool]:
    """systemd-timesyncd's word: its flag file once synchronised; None where it does not run."""
    run_dir = run_dir or TIMESYNCD_RUN_DIR
    if os.path.exists(os.path.join(run_dir, "synchronized")):
        return True
    return False if os.path.isdir(run_dir) else None


def kernel_clock() -> Optional[KernelClock]:
    """A read-only adjtimex call (modes=0: no privilege needed); None where there is none.

    None too under a seccomp filter that refuses it, as ``ProtectClock=yes``
    does (our unit's): it refuses the @clock system calls, reading included.
    """
    function = _adjtimex()
    if function is None:
        return None
    timex = _Timex()
    state = function(ctypes.byref(timex))
    if state < 0:
        return None
    return KernelClock(state, timex.status, timex.maxerror, timex.tick, timex.time.tv_sec)


class Clock:
    """Real time: wall clock in UTC, a monotonic clock, and interruptible sleep."""

    _told_no_kernel = False

    def now(self) -> dt.datetime:
        """Naive UTC wall-clock time (the meter and the files speak naive UTC)."""
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

    def monotonic(self) -> float:
        return time.monotonic()

    def synchronised(self) -> bool:
        """Whether an NTP client vouches for the wall clock; True where nothing can say.

        The kernel's answer where it may be asked, else systemd-timesyncd's flag
        file (the service's unit refuses adjtimex; timesyncd is the Pi's default).
        """
        state = kernel_clock()
        if state is not None:
            return state.synchronised
        if not self._told_no_kernel:
            self._told_no_kernel = True
            log.info("adjtimex is refused here (errno %d; ProtectClock=yes?): the clock counts as synchronised "
                     "when systemd-timesyncd says so, or when it does not run", ctypes.get_errno())
        return timesyncd_synchronised() is not False

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
