"""When the reader polls (pollphase.py): on the wall clock's interval, clear of the meter's own tick.

A modelled meter, in plain arithmetic: its seconds begin at a fraction of the host's second and
may drift; each poll lands late by a latency drawn from a seeded generator, as a busy link does.
What counts is what a user would miss: seconds of the meter that no poll read.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from typing import Callable, List, Sequence, Tuple

import pytest

from wattchecker_client.clock import EPOCH
from wattchecker_client.pollphase import PollPhase, seconds_until_next_tick

START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def at(epoch: float) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=round(epoch * 1e6))


@pytest.mark.parametrize(
    "now, interval, offset, expected",
    [
        (dt.datetime(2026, 1, 1, 0, 0, 0, 250000), 1.0, 0.0, 0.75),
        (dt.datetime(2026, 1, 1, 0, 0, 0), 1.0, 0.0, 1.0),
        (dt.datetime(2026, 1, 1, 0, 0, 7, 500000), 5.0, 0.0, 2.5),
        (dt.datetime(2026, 1, 1, 0, 0, 0, 30000), 0.1, 0.0, 0.07),
        (dt.datetime(2026, 1, 1, 0, 0, 0, 250000), 1.0, 0.5, 0.25),
        (dt.datetime(2026, 1, 1, 0, 0, 0, 750000), 1.0, 0.5, 0.75),
        (dt.datetime(2026, 1, 1, 0, 0, 7, 0), 5.0, 0.25, 3.25),
    ],
)
def test_polls_align_to_the_wall_clock_plus_the_offset(now, interval, offset, expected):
    assert seconds_until_next_tick(now, interval, offset) == pytest.approx(expected)


def test_a_clock_set_puts_the_polls_half_a_second_from_where_it_ticks():
    phase = PollPhase(1.0)
    phase.clock_set(at(START + 0.98))  # the meter's seconds now begin at .98 of the host's
    assert phase.offset == pytest.approx(0.48)
    assert phase.delay(at(START + 1.0)) == pytest.approx(0.48)
    every_five = PollPhase(5.0)
    every_five.clock_set(at(START + 2.3))
    assert every_five.delay(at(START + 3.0)) == pytest.approx(2.8)  # 00:00:05.8: a multiple of 5, plus .8


def read_meter(phase: PollPhase, tick: float, seconds: int, latency: Callable[[], float],
               drift: float = 0.0) -> Tuple[List[int], int]:
    """The meter seconds ``seconds`` of polls read, and how often the polls moved: its seconds begin at
    host fraction ``tick`` and run ``drift`` fast; each poll lands ``latency()`` after its moment."""
    host, stamps, moves = START, [], 0
    for _ in range(seconds):
        host += phase.delay(at(host)) + latency()
        stamp = math.floor(host - tick + drift * (host - START))
        moves += phase.reading(at(stamp))
        stamps.append(stamp)
    return stamps, moves


def feed(phase: PollPhase, stamps: Sequence[int], host: float = START) -> Tuple[float, int]:
    """Polls 10 ms late that read ``stamps`` (seconds after START): the host's time after the last, and
    how often the polls moved."""
    moves = 0
    for stamp in stamps:
        host += phase.delay(at(host)) + 0.01
        moves += phase.reading(at(START + stamp))
    return host, moves


def lost(stamps: List[int]) -> int:
    """Meter seconds between the first and last read that no poll read."""
    return (stamps[-1] - stamps[0] + 1) - len(set(stamps))


def jitter(seed: int, most: float = 0.06) -> Callable[[], float]:
    rng = random.Random(seed)
    return lambda: rng.uniform(0.0, most)


def fixed(interval: float = 1.0) -> PollPhase:
    """The polls on the host's whole seconds, as before: never following the tick."""
    phase = PollPhase(interval)
    phase._follows = False
    return phase


def test_a_tick_just_behind_the_polls_costs_one_second_at_most_then_none():
    """Meter seconds begin 20 ms after the host's, polls land 0-60 ms late: fixed polls lose a
    second again and again; following ones move once, half a second earlier, and lose none after."""
    before, _ = read_meter(fixed(), 0.02, 3600, jitter(1))
    phase = PollPhase(1.0)
    after, moves = read_meter(phase, 0.02, 3600, jitter(1))
    assert lost(before) > 100
    assert moves == 1 and phase.offset == pytest.approx(0.5)
    assert lost(after) <= 1 and lost(after[10:]) == 0


@pytest.mark.parametrize("drift", [50e-6, -50e-6])
def test_crystals_drifting_apart_cost_a_second_per_crossing_at_most(drift):
    """50 ppm (4.3 s a day), fast or slow: the tick sweeps past the polls again and again.
    Each time it comes near, the polls step away, for a second lost at most."""
    before, _ = read_meter(fixed(), 0.3, 86_400, jitter(2), drift)
    after, moves = read_meter(PollPhase(1.0), 0.3, 86_400, jitter(2), drift)
    assert lost(before) > 500
    assert 4 <= moves <= 12  # a move per half second of drift: 8.6, give or take the first
    assert lost(after) <= moves


@pytest.mark.parametrize("interval", [2.0, 5.0])
def test_longer_intervals_follow_the_tick_too(interval):
    stamps, moves = read_meter(PollPhase(interval), 0.02, 2000, jitter(3))
    steps = {b - a for a, b in zip(stamps[10:], stamps[11:])}
    assert moves == 1 and steps == {int(interval)}


def test_steps_that_are_not_the_tick_move_nothing():
    fast = [20 * n for n in range(50)]  # a simulator at clock_speed=20: 20 seconds a poll
    assert feed(PollPhase(1.0), fast)[1] == 0
    stepped = [0, 1, 2, 3, 9, 10, 11, 5, 6, 7]  # a clock set or stepped a few seconds: off by more than one
    assert feed(PollPhase(1.0), stepped)[1] == 0
    twice = PollPhase(0.5)  # faster than the meter's second: seconds read twice by design
    stamps, moves = read_meter(twice, 0.02, 600, jitter(4))
    assert stamps and moves == 0


def test_an_unsteady_start_moves_nothing_and_a_new_link_starts_afresh():
    """The first step of a link has nothing steady before it: a skip there is not the tick."""
    phase = PollPhase(1.0)
    host, moves = feed(phase, [0, 2, 3, 4])  # a skip first: not steady yet
    assert moves == 0
    phase.connected()
    host, moves = feed(phase, [6], host)  # the first of a new link: nothing to compare with
    assert moves == 0
    assert feed(phase, [7, 8, 10], host)[1] == 1  # steady, steady, then a skip: the tick
