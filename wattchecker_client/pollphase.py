"""When to poll: on the wall clock's interval, half a second away from the meter's own tick.

A meter stamps each reading with its clock, and that clock's seconds begin wherever it was
set: at the host's fraction of a second when the set command reached it, or anywhere for a
meter set by someone else. Polls on the host's whole seconds read one meter second per poll
only while that tick stays clear of them. A tick just behind the poll's moment makes the
link's jitter (a busy Pi, BlueZ's answers on a second D-Bus connection) read one second twice
and skip the next: a second lost that the meter measured.

So the polls keep half a second from the tick. After the reader sets the meter's clock (on the
host's whole second, meter.py), the tick's place is known: where the host's clock stood at the
set. A meter that keeps its old tick through a set (the protocol notes do not say), one set by
someone else, and two crystals drifting apart (1-2 s a day) are all found the same way: after
a steady run, a step one second off the schedule's means the tick sits just behind the poll (a
poll lands late, never early), and moving half a second earlier clears it without skipping a
second. Sans-I/O: the reader hands in the host's time and each stamp, and sleeps what
``delay`` says.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Optional, Tuple

from .clock import EPOCH

HALF = 0.5  # seconds between the meter's tick and the poll, either side


def epoch_seconds(when: dt.datetime) -> float:
    """Seconds since 1970 of a naive UTC datetime, with its fraction."""
    return (when - EPOCH).total_seconds()


def seconds_until_next_tick(now: dt.datetime, interval: float, offset: float = 0.0) -> float:
    """Time to the next multiple of ``interval`` on the wall clock, plus ``offset``: polls that do not drift."""
    epoch = epoch_seconds(now) - offset
    next_tick = math.floor(epoch / interval + 1e-9) * interval + interval
    return max(0.0, next_tick - epoch)


class PollPhase:
    """Where in each interval one meter is polled; follows its tick (see the module's docstring)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.offset = 0.0  # seconds after each multiple of the interval: the tick's place is unknown
        # Only a whole-second interval has one step per poll to compare; faster polls read seconds twice anyway.
        self._follows = interval >= 1 and interval == int(interval)
        self._aim: Optional[float] = None  # the epoch second the coming poll was timed for
        self._last: Optional[Tuple[float, dt.datetime]] = None  # (aim, stamp) of the poll before
        self._steady = False  # the step before was the schedule's

    def delay(self, now: dt.datetime) -> float:
        """Seconds from ``now`` to the next poll; the poll after it reports its stamp to ``reading``."""
        wait = seconds_until_next_tick(now, self.interval, self.offset)
        self._aim = epoch_seconds(now) + wait
        return wait

    def clock_set(self, at: dt.datetime) -> None:
        """The meter's clock was set at host time ``at``: its seconds tick at that fraction from now on."""
        self.offset = (epoch_seconds(at) + HALF) % min(1.0, self.interval)
        self.connected()

    def connected(self) -> None:
        """A new link: the next step has no poll before it to compare with."""
        self._last, self._steady = None, False

    def reading(self, stamp: dt.datetime) -> bool:
        """The meter's stamp of the poll just made; True when it moved the polls half a second earlier."""
        aim, self._aim = self._aim, None
        if aim is None or not self._follows:
            return False
        last, self._last = self._last, (aim, stamp)
        if last is None:
            return False
        step, scheduled = (stamp - last[1]).total_seconds(), round(aim - last[0])
        steady, self._steady = self._steady, step == scheduled
        # A clock set or stepped, or a meter running fast, is off by more; an unsteady run is not the tick.
        if not steady or abs(step - scheduled) != 1:
            return False
        self.offset = (self.offset - HALF) % 1.0
        self.connected()  # the next poll comes half a second sooner: its step is not the schedule's
        return True
