"""Whether the system clock is synchronised, asked of whoever can tell under the unit the service ships with.

The kernel knows (adjtimex), and timesyncd, chrony and ntpd all report to it;
but ``ProtectClock=yes`` (our unit's) refuses even reading it. Then, in turn:

1. ``org.freedesktop.timedate1``'s ``NTPSynchronized`` over the system bus:
   systemd-timedated asks the kernel from outside our sandbox, so the answer
   holds whichever NTP client runs (timesyncd, chrony, ntpd). The bus starts
   timedated on demand; the unit allows AF_UNIX, and /run/dbus stays visible.
2. systemd-timesyncd's own flag file, where there is no bus (a container).

Where nobody can tell, the clock counts as *not* synchronised: the wait for
synchronisation (``time_sync_wait``) runs its course rather than trusting a
clock nobody vouches for. ``decide`` is the rule, fed the sources' answers;
``SyncCheck`` asks at most every ``CHECK_EVERY`` seconds (every
``CHECK_EVERY_SYNCHRONISED`` once synchronised), as a reader thread asks at
every reading.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

CHECK_EVERY = 10.0  # seconds between two questions while not synchronised; not at every reading
# Once synchronised, seldom: a clock rarely loses it, and timedated (started on demand) exits when idle.
CHECK_EVERY_SYNCHRONISED = 300.0
BUS_TIMEOUT = 3.0  # seconds for the whole bus exchange, timedated's start on demand included
TIMEDATE1 = ("org.freedesktop.timedate1", "/org/freedesktop/timedate1", "org.freedesktop.timedate1",
             "NTPSynchronized")
KERNEL, TIMEDATED, TIMESYNCD, NOBODY = "the kernel", "org.freedesktop.timedate1", "systemd-timesyncd", "nobody"

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


def timesyncd_synchronised(run_dir: Optional[str] = None) -> Optional[bool]:
    """systemd-timesyncd's word: its flag file once synchronised; None where it does not run."""
    run_dir = run_dir or TIMESYNCD_RUN_DIR
    if os.path.exists(os.path.join(run_dir, "synchronized")):
        return True
    return False if os.path.isdir(run_dir) else None


def kernel_synchronised() -> Optional[bool]:
    """The kernel's word; None where adjtimex is refused or missing."""
    state = kernel_clock()
    return None if state is None else state.synchronised


def timedated_synchronised(address: Optional[str] = None, timeout: float = BUS_TIMEOUT) -> Optional[bool]:
    """timedate1's NTPSynchronized on the system bus; None where there is no bus, no timedated or no answer.

    The bus client (sysbus.py) is imported here, only where the kernel cannot be asked (``ProtectClock=yes``).
    """
    from .sysbus import BusError, get_property, system_bus_address

    try:
        value = get_property(address or system_bus_address(), *TIMEDATE1[:3], TIMEDATE1[3], timeout)
    except BusError as exc:
        log.debug("no answer from %s: %s", TIMEDATED, exc)
        return None
    return value if isinstance(value, bool) else None


Source = Tuple[str, Callable[[], Optional[bool]]]
SOURCES: Sequence[Source] = ((KERNEL, kernel_synchronised), (TIMEDATED, timedated_synchronised),
                             (TIMESYNCD, timesyncd_synchronised))


@dataclass(frozen=True)
class SyncAnswer:
    synchronised: bool
    source: str  # who said so; NOBODY: nobody could tell, so not synchronised


def decide(sources: Iterable[Source]) -> SyncAnswer:
    """The first source that can tell decides; the rest are not asked. Nobody: not synchronised."""
    for name, ask in sources:
        answer = ask()
        if answer is not None:
            return SyncAnswer(answer, name)
    return SyncAnswer(False, NOBODY)


class SyncCheck:
    """``decide`` at most every ``every`` seconds of the monotonic clock (``every_synchronised`` once
    synchronised); says once who answers."""

    def __init__(self, sources: Sequence[Source] = SOURCES, every: float = CHECK_EVERY,
                 every_synchronised: float = CHECK_EVERY_SYNCHRONISED) -> None:
        self.sources = sources
        self.every = every
        self.every_synchronised = every_synchronised
        self._lock = threading.Lock()  # one thread asks; the others wait for its answer
        self._answer: Optional[SyncAnswer] = None
        self._asked_at = 0.0

    def synchronised(self, monotonic: float) -> bool:
        with self._lock:
            every = self.every_synchronised if self._answer and self._answer.synchronised else self.every
            if self._answer is None or monotonic - self._asked_at >= every:
                before, self._answer = self._answer, decide(self.sources)
                self._asked_at = monotonic
                if before is None or before.source != self._answer.source:
                    _tell(self._answer)
            return self._answer.synchronised


def _tell(answer: SyncAnswer) -> None:
    """Where the kernel cannot be asked, the log says who answers instead."""
    if answer.source == KERNEL:
        return
    refused = f"adjtimex is refused here (errno {ctypes.get_errno()}; ProtectClock=yes?)"
    if answer.source == NOBODY:
        log.warning("%s, and neither %s on the system bus nor %s can tell: the system clock counts as not "
                    "synchronised, and the wait for it (time_sync_wait) runs its course", refused, TIMEDATED, TIMESYNCD)
    else:
        log.info("%s: %s says whether the system clock is synchronised", refused, answer.source)
