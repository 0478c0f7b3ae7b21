"""One service's writer and energy counter on real files, wired as the daemon wires them (in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from wattchecker_client.clock import FakeClock
from wattchecker_client.live import LiveState
from wattchecker_client.protocol import Measurement
from wattchecker_client.writer import Writer

STEM = "wattchecker-data"


class Service:
    """A start-up: the writer's recovery, the energy restore; then rows in, flushes, the energy shown."""

    def __init__(self, data_dir: Path, clock: FakeClock, formats: Sequence[str] = ("csv", "json"),
                 checkpoint_interval: float = 30.0) -> None:
        self.clock = clock
        self.writer = Writer(data_dir, {"m": STEM}, formats, clock, buffer_seconds=3600)
        self.writer.recover()
        self.live = LiveState(clock, data_dir, {"m": STEM}, checkpoint_interval=checkpoint_interval)
        self.writer.listener = self.live
        self.live.restore({"m": self.writer.last_time("m")})

    def feed(self, rows: List[Measurement]) -> None:
        """Readings as a reader hands them over (buffered until a flush)."""
        for m in rows:
            self.writer.add("m", m)
            self.live.reading("m", m)

    def write(self, rows: List[Measurement]) -> None:
        self.feed(rows)
        self.writer.flush()

    def energy(self) -> float:
        return self.live.snapshot()["m"].energy_joules

    def settled_energy(self) -> float:
        """The energy shown once a checkpoint has run (and any recount it started has finished)."""
        self.live.checkpoint()
        if self.live.restorer is not None:
            self.live.restorer.join(60)
        self.live.save(force=True)
        return self.live.snapshot()["m"].energy_joules
