"""The clock-trust policy as a table: host state x meter offset x host step -> one decision each.

No link, no sleep, no clock: the policy is fed facts and returns decisions,
as h11's state machine is fed bytes. Each case runs the same story: a meter
connects, one right reading confirms it, then 20 s later the host is in the
case's state (its clock maybe stepped) and the meter's stamp is the case's
offset from the host's wall clock.
"""

from __future__ import annotations

import datetime as dt

import pytest

from wattchecker_client.clocktrust import (CLOCK_RESET_INTERVAL, RECENT_SECONDS, SYNCHRONISED, WAIT_OVER, WAITING,
                                           ClockTrust, Decision, Host, Kept, Watermark)

T0 = dt.datetime(2026, 11, 29, 6, 0, 0)
LATER = 20.0  # seconds after the connection when the case's reading comes
STEP = 600.0
OFFSETS = {"ahead": 60.0, "behind": -60.0, "right": 0.0}
STEPS = {"steady": 0.0, "stepped forward": STEP, "stepped back": -STEP}
# host state -> (synchronised at the start, synchronised at the reading, time_sync_wait)
HOSTS = {
    "synchronised": (True, True, 0.0),
    "synchronised late": (False, True, 180.0),  # NTP answers between the two readings
    "unsynchronised": (False, False, 0.0),  # no wait configured: over at once
    "waiting": (False, False, 180.0),
    "wait over": (False, False, 10.0),
}

RECORD = (True, None, False)
SET_AND_RECORD = (True, None, True)
SKIP_AHEAD_SET = (False, "ahead_of_host", True)
SKIP_BEHIND_SET = (False, "behind_host", True)

# (host, step, meter) -> (record, counter, set the meter's clock to the host's wall clock)
TABLE = {
    # Synchronised: a stamp far ahead is wrong (set back); one behind a steady clock is drift,
    # left for the hourly correction; after a step the clock is checked at once.
    ("synchronised", "steady", "ahead"): SKIP_AHEAD_SET,
    ("synchronised", "steady", "behind"): RECORD,
    ("synchronised", "steady", "right"): RECORD,
    ("synchronised", "stepped forward", "ahead"): SKIP_AHEAD_SET,
    ("synchronised", "stepped forward", "behind"): SKIP_BEHIND_SET,
    ("synchronised", "stepped forward", "right"): RECORD,
    ("synchronised", "stepped back", "ahead"): SKIP_AHEAD_SET,
    ("synchronised", "stepped back", "behind"): SKIP_BEHIND_SET,
    ("synchronised", "stepped back", "right"): RECORD,
    # Synchronised just now: proven right, so checked at once, as after a step.
    ("synchronised late", "steady", "ahead"): SKIP_AHEAD_SET,
    ("synchronised late", "steady", "behind"): SKIP_BEHIND_SET,
    ("synchronised late", "steady", "right"): RECORD,
    ("synchronised late", "stepped forward", "ahead"): SKIP_AHEAD_SET,
    ("synchronised late", "stepped forward", "behind"): SKIP_BEHIND_SET,
    ("synchronised late", "stepped forward", "right"): RECORD,
    ("synchronised late", "stepped back", "ahead"): SKIP_AHEAD_SET,
    ("synchronised late", "stepped back", "behind"): SKIP_BEHIND_SET,
    ("synchronised late", "stepped back", "right"): RECORD,
    # Unsynchronised and steady: it may lag, so a meter ahead is kept as it is; one behind
    # it is surely wrong: skipped and set forward. Never set back, waiting or not.
    ("unsynchronised", "steady", "ahead"): RECORD,
    ("unsynchronised", "steady", "behind"): SKIP_BEHIND_SET,
    ("unsynchronised", "steady", "right"): RECORD,
    ("waiting", "steady", "ahead"): RECORD,
    ("waiting", "steady", "behind"): SKIP_BEHIND_SET,
    ("waiting", "steady", "right"): RECORD,
    ("wait over", "steady", "ahead"): RECORD,
    ("wait over", "steady", "behind"): SKIP_BEHIND_SET,
    ("wait over", "steady", "right"): RECORD,
    # Unsynchronised but stepped: someone set it, so it is proven; a meter off it is set at
    # once. Ahead: the reading is kept (only a synchronised clock proves a stamp ahead wrong).
    ("unsynchronised", "stepped forward", "ahead"): SET_AND_RECORD,
    ("unsynchronised", "stepped forward", "behind"): SKIP_BEHIND_SET,
    ("unsynchronised", "stepped forward", "right"): RECORD,
    ("unsynchronised", "stepped back", "ahead"): SET_AND_RECORD,
    ("unsynchronised", "stepped back", "behind"): SKIP_BEHIND_SET,
    ("unsynchronised", "stepped back", "right"): RECORD,
    ("waiting", "stepped forward", "ahead"): SET_AND_RECORD,
    ("waiting", "stepped forward", "behind"): SKIP_BEHIND_SET,
    ("waiting", "stepped forward", "right"): RECORD,
    ("waiting", "stepped back", "ahead"): SET_AND_RECORD,
    ("waiting", "stepped back", "behind"): SKIP_BEHIND_SET,
    ("waiting", "stepped back", "right"): RECORD,
    ("wait over", "stepped forward", "ahead"): SET_AND_RECORD,
    ("wait over", "stepped forward", "behind"): SKIP_BEHIND_SET,
    ("wait over", "stepped forward", "right"): RECORD,
    ("wait over", "stepped back", "ahead"): SET_AND_RECORD,
    ("wait over", "stepped back", "behind"): SKIP_BEHIND_SET,
    ("wait over", "stepped back", "right"): RECORD,
}


def test_the_table_covers_every_case_once():
    assert set(TABLE) == {(h, s, m) for h in HOSTS for s in STEPS for m in OFFSETS}


def decide(host_state: str, step: str, meter: str) -> Decision:
    synced_at_start, synced_later, wait = HOSTS[host_state]
    trust = ClockTrust(Host(T0, 0.0, synced_at_start), time_sync_wait=wait)
    trust.on_connect(Host(T0, 0.0, synced_at_start))
    trust.reading(T0 + dt.timedelta(seconds=1), Host(T0 + dt.timedelta(seconds=1), 1.0, synced_at_start))
    wall = T0 + dt.timedelta(seconds=LATER + STEPS[step])
    return trust.reading(wall + dt.timedelta(seconds=OFFSETS[meter]), Host(wall, LATER, synced_later))


@pytest.mark.parametrize("host_state, step, meter", sorted(TABLE))
def test_one_decision_per_case(host_state, step, meter):
    record, counter, sets = TABLE[host_state, step, meter]
    decision = decide(host_state, step, meter)
    wall = T0 + dt.timedelta(seconds=LATER + STEPS[step])
    assert (decision.record, decision.counter, decision.set_clock) == (record, counter, wall if sets else None)
    assert decision.offset == OFFSETS[meter]


def test_an_unsynchronised_host_never_sets_a_meter_back():
    """Whatever the wait: no decision from an unproven host clock sets a meter's clock earlier than its stamp."""
    for host_state in ("unsynchronised", "waiting", "wait over"):
        for meter, offset in OFFSETS.items():
            decision = decide(host_state, "steady", meter)
            assert decision.set_clock is None or offset < 0, (host_state, meter)


def test_at_connection_only_a_proven_host_clock_sets_the_meter():
    five = T0 + dt.timedelta(seconds=5)
    assert ClockTrust(Host(T0, 0.0, True)).on_connect(Host(five, 5.0, True)) == five
    for wait in (0.0, 180.0):
        assert ClockTrust(Host(T0, 0.0, False), time_sync_wait=wait).on_connect(Host(five, 5.0, False)) is None


def test_a_meter_that_ignores_being_set_back_is_recorded_as_it_is():
    """A fast simulated clock: set back once, still ahead: its stamps are recorded, and it is told once."""
    trust = ClockTrust(Host(T0, 0.0, True))
    trust.on_connect(Host(T0, 0.0, True))
    host = Host(T0 + dt.timedelta(seconds=30), 30.0, True)
    ahead = host.wall + dt.timedelta(seconds=60)
    assert trust.reading(ahead, host).record is True  # just set, and still ahead: it ignores sets
    assert [kind for kind, _ in trust.take_events()] == ["ignores set"]
    later = Host(T0 + dt.timedelta(seconds=90), 90.0, True)
    assert trust.reading(later.wall + dt.timedelta(seconds=120), later) == Decision(True, offset=120.0)
    assert trust.take_events() == []


def test_a_meter_behind_an_unproven_host_is_asked_once_an_hour_not_every_second():
    trust = ClockTrust(Host(T0, 0.0, False))
    behind = [trust.reading(T0 - dt.timedelta(days=2), Host(T0 + dt.timedelta(seconds=k), float(k), False))
              for k in range(1, 4)]
    assert [d.set_clock is not None for d in behind] == [True, False, False]
    assert {(d.record, d.counter) for d in behind} == {(False, "behind_host")}
    hour = CLOCK_RESET_INTERVAL + 1
    again = trust.reading(T0 - dt.timedelta(days=2), Host(T0 + dt.timedelta(seconds=hour), hour, False))
    assert again.set_clock == T0 + dt.timedelta(seconds=hour)


def test_events_tell_the_wait_and_the_synchronisation_once_each():
    trust = ClockTrust(Host(T0, 0.0, False), time_sync_wait=30.0)
    assert trust.waiting(0.0)
    for k in range(1, 4):
        trust.reading(T0 + dt.timedelta(seconds=k), Host(T0 + dt.timedelta(seconds=k), float(k), False))
    assert trust.take_events() == [(WAITING, 30.0)]
    trust.reading(T0 + dt.timedelta(seconds=5), Host(T0 + dt.timedelta(seconds=5), 5.0, True))
    assert trust.take_events() == [(SYNCHRONISED, 0.0), (WAIT_OVER, 1.0)]
    assert not trust.waiting(6.0)
    assert trust.describe() == "clock: the system's (synchronised)"


def test_the_wait_running_out_is_told_and_changes_no_rule():
    trust = ClockTrust(Host(T0, 0.0, False), time_sync_wait=10.0)
    trust.reading(T0, Host(T0, 1.0, False))
    trust.take_events()
    late = Host(T0 + dt.timedelta(seconds=11), 11.0, False)
    assert trust.reading(late.wall + dt.timedelta(days=2), late) == Decision(True, offset=2 * 86400.0)
    assert trust.take_events() == [(WAIT_OVER, 0.0)]
    assert trust.describe() == ("clock: the meter's (the system clock is not synchronised and may lag; "
                                "a meter behind it is set forward, never back)")


# --- the watermark: no second recorded twice, and the mark following a clock set back -----------

def at(k: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=k)


AHEAD = [("see", 70, True), ("see", 71, True), ("see", 72, True)]  # a meter a minute ahead, recorded
SET_BACK = AHEAD + [("set", 13, True), ("see", 73, False)]  # the service sets it back; that reading is skipped

def saved(to: int, ahead: int) -> dict:
    return {"set_back_to": str(at(to)), "ahead_until": str(at(ahead))}


# (the mark on disk at start, what happened before) + the stamp seen (right or not) -> what the watermark makes of it
WATERMARK = {
    "the first second ever": (None, [], 11, True, Kept(True)),
    "the next second": (10, [], 11, True, Kept(True)),
    "seconds missing before it": (10, [], 14, True, Kept(True, missing=3)),
    "the second on disk again": (10, [], 10, True, Kept(False, "duplicates")),
    "a second before the mark": (10, [], 5, True, Kept(False, "stale_seconds")),
    "a stamp the clock policy refused": (10, [], 11, False, Kept(False)),
    "a jump after a clock set is no gap": (10, [("set", 20, False)], 20, True, Kept(True)),
    "a jump without one is a gap": (10, [], 20, True, Kept(True, missing=9)),
    "the reading that asked for a set back": (10, AHEAD + [("set", 13, True)], 73, False,
                                              Kept(False, moved_back_to=at(12), memory=saved(12, 72))),
    "a second set back before the first is passed": (10, SET_BACK + [("see", 13, True), ("set", 5, True)], 14, False,
                                                     Kept(False, moved_back_to=at(4), memory=saved(4, 72))),
    "the right seconds passing the wrong ones": (10, SET_BACK + [("see", k, True) for k in range(13, 73)], 73, True,
                                                 Kept(True, missing=3, memory={})),  # 70-72: kept before
    "the right second after a set back": (10, SET_BACK, 13, True, Kept(True)),
    "a right second once recorded as a wrong one": (10, SET_BACK + [("see", 13, True)], 71, True,
                                                    Kept(False, "duplicates")),
    "set back below the mark on disk": (72, [("set", 13, True), ("see", 73, False)], 13, True, Kept(True)),
    "a set forward moves no mark": (10, [("set", 30, False), ("see", 11, True)], 12, True, Kept(True)),
}


@pytest.mark.parametrize("case", sorted(WATERMARK))
def test_the_watermark(case):
    mark, before, stamp, right, expected = WATERMARK[case]
    watermark = Watermark(None if mark is None else at(mark))
    for action, k, flag in before:
        if action == "set":
            watermark.meter_set(at(k), back=flag)
        else:
            watermark.see(at(k), flag)
    assert watermark.see(at(stamp), right) == expected


def test_the_watermark_remembers_the_last_hour_of_seconds_only():
    watermark = Watermark(at(0))
    for k in range(1, RECENT_SECONDS + 11):
        watermark.see(at(k), True)
    watermark.meter_set(at(6), back=True)  # back before the hour it remembers (seconds 11 on)
    watermark.see(at(RECENT_SECONDS + 11), False)
    assert watermark.see(at(11), True) == Kept(False, "duplicates")  # remembered: never twice
    assert watermark.see(at(10), True) == Kept(True)  # forgotten: the writer keeps it out of its files


# (newest second on disk at start, what the last run saved) -> the mark, and what a right reading after it makes
RESTORED = {
    "nothing saved": (72, {}, 72),
    "a set back, the wrong seconds still the newest on disk": (72, saved(12, 72), 12),
    "a set back, some wrong rows lost in a crash": (70, saved(12, 72), 12),
    "a set back the right seconds have passed": (80, saved(12, 72), 80),
    "an unreadable memory": (72, {"set_back_to": "soon", "ahead_until": 72}, 72),
    "nothing on disk": (None, saved(12, 72), None),
}


@pytest.mark.parametrize("case", sorted(RESTORED))
def test_the_watermark_at_start(case):
    on_disk, memory, mark = RESTORED[case]
    watermark = Watermark.restored(None if on_disk is None else at(on_disk), memory)
    assert watermark.last == (None if mark is None else at(mark))
    still_ahead = mark == 12
    assert watermark.memory == (memory if still_ahead else {})
    # A reading past every wrong second (or the first one, when the memory no longer held): forget it.
    forget = {} if memory else None
    assert watermark.see(at(90), True) == Kept(True, missing=0 if mark is None else 89 - mark, memory=forget)


def test_a_restart_after_a_set_back_keeps_every_right_second():
    """The wrong seconds 70-72 are the newest on disk; after the restart the right ones from 13 on are kept."""
    watermark = Watermark(at(10))
    for k in (70, 71, 72):
        watermark.see(at(k), True)
    watermark.meter_set(at(13), back=True)
    memory = watermark.see(at(73), False).memory
    for k in range(13, 20):
        assert watermark.see(at(k), True).record
    restarted = Watermark.restored(at(72), memory)
    assert [restarted.see(at(k), True).record for k in range(21, 80)] == [True] * 59
