"""Which clock to believe, the host's or the meter's: a sans-I/O policy.

``ClockTrust`` is fed facts (the meter's stamp, the host's wall and monotonic
clocks, whether the kernel calls the host clock synchronised) and returns a
``Decision``: record the reading or skip it (and which counter says so), and
whether to set the meter's clock to a time. It never touches a link, a clock or
a logger: ``MeterReader`` carries the decisions out, and every rule is a row in
a table-driven test.

The rules, and why:

- A host clock is *proven* once the kernel calls it synchronised, or once it
  steps (NTP's first answer, someone's ``date -s``). Against a proven clock the
  meter is set at each connection, a stamp far ahead is skipped and the meter
  set back, and one behind is skipped and set once the host has just been proven.
- An *unproven* host clock shows only that the real time is at least what it
  says: a Pi without network restores its clock at boot from the last one
  saved, so it lags. It never sets a meter's clock backward, whether the wait
  for synchronisation lasts or has run out. A meter behind it is surely wrong
  (it lost its power): that reading is skipped and the meter set forward.
- A meter slowly drifting off a steady proven clock keeps its stamps and is
  set again at most once an hour.
- No second is recorded twice (``Watermark``): a stamp at or before the
  newest one kept is skipped. When the service itself sets the meter's clock
  back, the mark follows, so the right stamps after the set are kept, and the
  seconds recorded in the last hour stay refused. That set-back is saved
  (``Watermark.memory``) until the right stamps pass the wrong ones: at start
  the newest second on disk may be a wrong one, and judged against it every
  right reading would look stale.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .clock import utc_epoch

# Re-set a drifting meter clock at most this often, and only past this drift.
CLOCK_RESET_INTERVAL = 3600.0
MAX_CLOCK_DRIFT = 2.0
# How far a right meter's stamp can be from the host clock: the drift allowed,
# plus one because the meter's second is truncated.
CLOCK_TOLERANCE = MAX_CLOCK_DRIFT + 1
# How many recorded seconds the watermark remembers, so a meter clock set back an hour or less
# repeats none of them (older ones the writer keeps out of its files).
RECENT_SECONDS = 3600
# The host clock stepped when wall minus monotonic time moves by more than this
# between two looks: NTP's first answer after a boot, or someone's `date -s`.
HOST_STEP = 2.0


UNSYNCHRONISED = "the system clock is not synchronised and may lag; a meter behind it is set forward, never back"


def trust_in_words(synchronised: bool) -> str:
    """Which clock the service trusts on a host whose clock is (or is not) synchronised, for check-config."""
    if synchronised:
        return "the system clock is synchronised: it sets the meters' clocks"
    return UNSYNCHRONISED + "; a meter ahead of it keeps its time"


@dataclass(frozen=True)
class Host:
    """What the host knows of its own time at one moment."""

    wall: dt.datetime  # naive UTC
    monotonic: float
    synchronised: bool


@dataclass(frozen=True)
class Decision:
    """What to do with one reading: record it or skip it, and maybe set the meter's clock first."""

    record: bool
    counter: Optional[str] = None  # the MeterStats field a skip counts in
    set_clock: Optional[dt.datetime] = None
    offset: float = 0.0  # the meter's stamp minus the host's wall clock, seconds
    why: str = ""  # a few words for the log when the clock is set


@dataclass(frozen=True)
class Kept:
    """What the watermark made of one stamp: recorded or not, and what the reader counts and logs."""

    record: bool
    counter: Optional[str] = None  # the MeterStats field a skip counts in: "duplicates" or "stale_seconds"
    missing: int = 0  # seconds missing just before it (a gap), when recorded
    moved_back_to: Optional[dt.datetime] = None  # the mark followed the meter's clock set back to here
    memory: Optional[Dict[str, str]] = None  # the watermark's memory when it changed: save it


class Watermark:
    """The meter's seconds already recorded: the newest one, and the last hour of them."""

    def __init__(self, last: Optional[dt.datetime] = None, poll_interval: float = 1.0) -> None:
        self.last = last
        self.poll_interval = poll_interval
        self._recent: Dict[dt.datetime, None] = {}  # oldest first
        self._set_back_to: Optional[dt.datetime] = None  # where the mark goes after this reading
        self._skip_gap = False  # the next jump in stamps is a clock re-set, not missing seconds
        # After a set-back: (the mark it left, the newest wrong second kept before it), until passed.
        self._set_back: Optional[Tuple[dt.datetime, dt.datetime]] = None
        self._changed = False

    @classmethod
    def restored(cls, on_disk: Optional[dt.datetime], memory: Mapping[str, Any],
                 poll_interval: float = 1.0) -> "Watermark":
        """The mark at start: the newest second on disk, unless that is a wrong one a set-back left behind."""
        to, ahead = _stamp(memory.get("set_back_to")), _stamp(memory.get("ahead_until"))
        if on_disk is None or to is None or ahead is None or on_disk > ahead:
            watermark = cls(on_disk, poll_interval)
            watermark._changed = bool(memory)  # passed (or unreadable): forget it
            return watermark
        watermark = cls(min(on_disk, to), poll_interval)
        watermark._set_back = (to, ahead)
        return watermark

    @property
    def memory(self) -> Dict[str, str]:
        """What must survive a restart: the last set-back, while the wrong seconds are ahead of the right ones."""
        if self._set_back is None:
            return {}
        return {"set_back_to": str(self._set_back[0]), "ahead_until": str(self._set_back[1])}

    def meter_set(self, when: dt.datetime, back: bool) -> None:
        """The meter's clock was set to ``when``; when that moved it back, the mark follows (docs/clock.md).

        Stamps after the set are the right ones: judged against the wrong ones
        already kept, every right second would look stale until the meter
        caught up. Seconds already written are still never written again (the
        writer keeps them out of its files); late rows go to ``.partN`` files.
        """
        self._skip_gap = True
        if back:
            self._set_back_to = when.replace(microsecond=0) - dt.timedelta(seconds=1)

    def see(self, stamp: dt.datetime, right: bool) -> Kept:
        """One reading: new (after every second kept, and not one of the last hour's) if it ``right``-ly can be."""
        kept = self._is_new(stamp) if right else Kept(False)
        mark, self._set_back_to = self._set_back_to, None  # after the reading: one kept meanwhile must not raise it
        moved = None
        if mark is not None and self.last is not None and self.last > mark:
            ahead = max(self.last, self._set_back[1]) if self._set_back else self.last
            self._set_back, self.last, moved, self._changed = (mark, ahead), mark, mark, True
        changed, self._changed = self._changed, False
        return Kept(kept.record, kept.counter, kept.missing, moved, self.memory if changed else None)

    def _is_new(self, when: dt.datetime) -> Kept:
        last = self.last
        if when in self._recent or (last is not None and when <= last):
            return Kept(False, "duplicates" if when == last or when in self._recent else "stale_seconds")
        self.last = when
        if self._set_back is not None and when > self._set_back[1]:  # the right seconds passed the wrong ones
            self._set_back, self._changed = None, True
        self._recent[when] = None
        if len(self._recent) > RECENT_SECONDS:
            del self._recent[next(iter(self._recent))]
        skip_gap, self._skip_gap = self._skip_gap, False
        if last is None or skip_gap:  # a jump made by re-setting the clock is not a gap
            return Kept(True)
        step = int((when - last).total_seconds())
        expected = max(1, round(self.poll_interval))
        return Kept(True, missing=max(0, step - expected))


def _stamp(value: Any) -> Optional[dt.datetime]:
    try:
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


# Events the reader logs (and the daemon hears of): (kind, value).
STEPPED, SYNCHRONISED, WAITING, WAIT_OVER, IGNORES_SET = "stepped", "synchronised", "waiting", "wait over", "ignores set"


class ClockTrust:
    """One meter's clock-trust state: fed the host's clocks and the meter's stamps, returns decisions."""

    def __init__(self, host: Host, *, time_sync_wait: float = 0.0, poll_interval: float = 1.0,
                 last: Optional[dt.datetime] = None, saved: Optional[Mapping[str, Any]] = None) -> None:
        self.watermark = Watermark.restored(last, saved or {}, poll_interval)  # saved: Watermark.memory
        self.time_sync_wait = time_sync_wait
        self.poll_interval = poll_interval
        self._deadline = host.monotonic + time_sync_wait
        self._synced = host.synchronised
        self._stepped = False
        self._waiting = not host.synchronised  # until synchronised, or the wait runs out
        self._told_waiting = False
        self._host_offset = utc_epoch(host.wall) + host.wall.microsecond / 1e6 - host.monotonic
        self._set_at: Optional[float] = None
        self._reset_due = False  # check the meter's clock at the next reading, not an hour later
        self._just_set = False  # the meter's clock was set; no reading has confirmed it yet
        self._ignores_set_told = False
        self.events: List[Tuple[str, float]] = []

    # --- what the reader asks ------------------------------------------------------------------

    @property
    def proven(self) -> bool:
        """True once the host clock is known right: synchronised, or stepped by someone."""
        return self._synced or self._stepped

    def waiting(self, monotonic: float) -> bool:
        """True while the host clock is unproven and the wait for its synchronisation lasts."""
        return self._waiting and not self.proven and monotonic < self._deadline

    def describe(self) -> str:
        """Which clock is trusted and why, in a phrase for the status line."""
        if self._synced:
            return "clock: the system's (synchronised)"
        if self._stepped:
            return "clock: the system's (it stepped, so someone set it)"
        return "clock: the meter's (" + UNSYNCHRONISED + ")"

    def take_events(self) -> List[Tuple[str, float]]:
        events, self.events = self.events, []
        return events

    def on_connect(self, host: Host) -> Optional[dt.datetime]:
        """The time to set a newly connected meter's clock to, or None to leave it alone."""
        self._look(host)
        if not self.proven:
            return None  # its first reading tells whether it is behind
        self._was_set(host.monotonic)
        return host.wall

    def reading(self, stamp: dt.datetime, host: Host) -> Decision:
        """Decide on one reading stamped ``stamp`` by the meter."""
        self._look(host)
        offset = (stamp - host.wall).total_seconds()
        if not self.proven:
            return self._unproven(offset, host)
        if self._synced and offset > CLOCK_TOLERANCE + self.poll_interval:
            return self._ahead(offset, host)
        self._just_set = False
        if offset < -CLOCK_TOLERANCE and self._reset_due:
            return self._set(host, False, "behind_host", offset, "behind the host clock")
        if abs(offset) <= CLOCK_TOLERANCE:
            self._reset_due = False
            return Decision(True, offset=offset)
        if self._reset_due or self._set_at is None or host.monotonic - self._set_at >= CLOCK_RESET_INTERVAL:
            return self._set(host, True, None, offset, "off")
        return Decision(True, offset=offset)

    def meter_set(self, decision: Decision) -> None:
        """The meter acknowledged the clock set ``decision`` asked for: the watermark follows it."""
        assert decision.set_clock is not None
        self.watermark.meter_set(decision.set_clock, back=decision.offset > 0)

    def kept(self, stamp: dt.datetime, decision: Decision) -> Kept:
        """After ``decision`` (and the set it asked for): whether the stamp is recorded, never a second twice."""
        return self.watermark.see(stamp, decision.record)

    # --- the rules ---------------------------------------------------------------------------

    def _unproven(self, offset: float, host: Host) -> Decision:
        """A lagging host clock: a meter behind it is wrong and set forward; never set one back."""
        if offset >= -CLOCK_TOLERANCE:
            self._just_set = False
            return Decision(True, offset=offset)
        if self._just_set and host.monotonic - (self._set_at or 0.0) < CLOCK_RESET_INTERVAL:
            return Decision(False, "behind_host", offset=offset)  # asked already; not again every second
        return self._set(host, False, "behind_host", offset, "behind the unsynchronised host clock")

    def _ahead(self, offset: float, host: Host) -> Decision:
        """Far ahead of a synchronised clock: skip and set back, unless it was just set and ignored that."""
        if not self._just_set:
            return self._set(host, False, "ahead_of_host", offset, "ahead of the synchronised host clock")
        if not self._ignores_set_told:  # it keeps its own time (a simulated fast clock): skipping would lose all
            self._ignores_set_told = True
            self.events.append((IGNORES_SET, offset))
        if self._set_at is not None and host.monotonic - self._set_at >= CLOCK_RESET_INTERVAL:
            return self._set(host, True, None, offset, "off")
        return Decision(True, offset=offset)

    def _set(self, host: Host, record: bool, counter: Optional[str], offset: float, why: str) -> Decision:
        self._was_set(host.monotonic)
        return Decision(record, counter, host.wall, offset, why)

    def _was_set(self, monotonic: float) -> None:
        self._set_at = monotonic
        self._reset_due = False
        self._just_set = True

    # --- the host clock ----------------------------------------------------------------------

    def _look(self, host: Host) -> None:
        """Note a step, a synchronisation, the wait starting or ending."""
        offset = utc_epoch(host.wall) + host.wall.microsecond / 1e6 - host.monotonic
        step, self._host_offset = offset - self._host_offset, offset
        if abs(step) > HOST_STEP:
            self._stepped = True
            self._reset_due = True
            self.events.append((STEPPED, step))
        if host.synchronised and not self._synced:
            self._reset_due = True
            self.events.append((SYNCHRONISED, 0.0))
        self._synced = host.synchronised
        if self._waiting and (self.proven or host.monotonic >= self._deadline):
            self._waiting = False
            self.events.append((WAIT_OVER, 1.0 if self.proven else 0.0))
        elif self._waiting and not self._told_waiting:
            self._told_waiting = True
            self.events.append((WAITING, self.time_sync_wait))
