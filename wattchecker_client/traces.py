"""Appliance traces the simulator can play, each with the runs it truly holds.

Recorded-style: one W value a second, with the shapes that trip hand-made
automations (the pauses inside a wash, a compressor's start spike, a standby
that wanders). Each trace is built from a seed, repeats every ``period``
seconds (played by the epoch second modulo it), and knows its true runs:
[first working second, last working second + 1), in seconds of the period.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

from .runs import RunSettings


@dataclass(frozen=True)
class Trace:
    name: str
    watts: Tuple[float, ...]  # one per second of the period
    runs: Tuple[Tuple[int, int], ...]  # true runs, (start, end exclusive) in seconds of the period
    settings: RunSettings  # thresholds that suit the appliance

    @property
    def period(self) -> int:
        return len(self.watts)

    def at(self, epoch_second: int) -> float:
        return self.watts[epoch_second % self.period]


class _Builder:
    """Appends seconds of rest and of work, noting where each run begins and ends."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.watts: List[float] = []
        self.runs: List[Tuple[int, int]] = []
        self._start = None

    def rest(self, seconds: int, low: float, high: float) -> None:
        self.watts += [round(self.rng.uniform(low, high), 2) for _ in range(seconds)]

    def work(self, seconds: int, level: Callable[[int], float]) -> None:
        if self._start is None:
            self._start = len(self.watts)
        self.watts += [round(level(i), 2) for i in range(seconds)]

    def end_run(self) -> None:
        self.runs.append((self._start, len(self.watts)))
        self._start = None

    def trace(self, name: str, settings: RunSettings) -> Trace:
        return Trace(name, tuple(self.watts), tuple(self.runs), settings)


def wash(seed: int = 1) -> Trace:
    """A washing machine: two cycles in 6 hours, each fill, heat, tumble and spin, soaking pauses up to 4 min."""
    b = _Builder(seed)
    rng = b.rng
    for _ in range(2):
        b.rest(rng.randint(1800, 3600), 0.8, 1.6)  # standby: display and control board
        for phase in range(12):
            heating = phase in (1, 2)
            b.work(rng.randint(120, 600), lambda i: (900 if heating else 0) + 120 + 180 * (i % 40 < 25) * rng.random())
            pause = 240 if phase == 3 else rng.randint(20, 239)  # one pause of exactly 4 minutes
            b.rest(pause, 2.0, 3.5)  # soaking: the pump and drum still, the board awake
        b.work(420, lambda i: 350 + 150 * rng.random())  # the final spin
        b.end_run()
    b.rest(21600 - len(b.watts), 0.8, 1.6)
    return b.trace("wash", RunSettings(15.0, 5.0, 300))


def fridge(seed: int = 1) -> Trace:
    """A fridge: the compressor's start spike, 10-18 minutes at 70-95 W, 20-35 minutes off at 1-2 W."""
    b = _Builder(seed)
    rng = b.rng
    while len(b.watts) < 4 * 3600:
        b.rest(rng.randint(1200, 2100), 1.0, 2.0)
        b.work(rng.randint(600, 1080), lambda i: 320.0 if i < 2 else 70 + 25 * rng.random())
        b.end_run()
    b.rest(1500, 1.0, 2.0)
    return b.trace("fridge", RunSettings(30.0, 10.0, 120))


def kettle(seed: int = 1) -> Trace:
    """A kettle: 2-4 minutes at 1200-1300 W, three times in four hours, near nothing between."""
    b = _Builder(seed)
    rng = b.rng
    for _ in range(3):
        b.rest(rng.randint(2400, 4200), 0.3, 0.6)
        b.work(rng.randint(120, 240), lambda i: 1200 + 100 * rng.random())
        b.end_run()
    b.rest(4 * 3600 - len(b.watts) if len(b.watts) < 4 * 3600 else 600, 0.3, 0.6)
    return b.trace("kettle", RunSettings(100.0, 50.0, 30))


def noisy_standby(seed: int = 1) -> Trace:
    """A TV: a standby wandering 3-9 W with spikes to 15 W, two evenings of 60-140 W."""
    b = _Builder(seed)
    rng = b.rng

    def standby(seconds: int) -> None:
        for _ in range(seconds):
            b.rest(1, 3.0, 9.0) if rng.random() > 0.01 else b.rest(1, 12.0, 15.0)

    for _ in range(2):
        standby(rng.randint(1800, 3000))
        b.work(rng.randint(1200, 2400), lambda i: 60 + 80 * rng.random())
        b.end_run()
    standby(1800)
    return b.trace("standby", RunSettings(30.0, 20.0, 120))


TRACES: Dict[str, Callable[[int], Trace]] = {"wash": wash, "fridge": fridge, "kettle": kettle, "standby": noisy_standby}


@functools.lru_cache(maxsize=8)
def trace(name: str, seed: int = 1) -> Trace:
    """A trace by name, made once per seed."""
    if name not in TRACES:
        raise ValueError(f"unknown trace {name!r}; known: {', '.join(TRACES)}")
    return TRACES[name](seed)
