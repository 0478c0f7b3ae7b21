"""A stateful property test of the data folder: readings, late rows, meter set-backs, flushes, hour
closes, crashes and restarts, retention passes, uploads and damaged files, interleaved by hypothesis,
with the folder's promises checked after every step."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Set

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from wattchecker_client.clock import FakeClock, time_zone, utc_epoch
from wattchecker_client.datadir import read_summaries
from wattchecker_client.protocol import Measurement
from wattchecker_client.report import meter_report
from wattchecker_client.upload.hours import hour_files, readable_rows
from wattchecker_client.upload.ledger import Ledger
from wattchecker_client.upload.retention import Retention
from wattchecker_client.writer import closed_files_in

from .service import Service
from .test_crash import seconds_on_disk
from .test_union import damage

STEM = "wattchecker-data"
START = dt.datetime(2026, 7, 1, 9, 40, 0)
UTC = time_zone("UTC")
EPOCH = dt.datetime(1970, 1, 1)
RETENTION_DAYS = 2


def reading(t: int) -> Measurement:
    return Measurement(EPOCH + dt.timedelta(seconds=t), 100.0, 1000.0 + t % 13, 20.0 + (t * 7919 % 1000) / 7)


class DataFolder(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="folder-states-"))
        self.clock = FakeClock(START)
        self.meter_time = utc_epoch(START)  # the meter's next second
        self.durable_seconds: Set[int] = set()  # seconds a completed flush told durable
        self.lost: Set[int] = set()  # ... of them in a file damaged since (so no longer promised)
        self.deleted: Dict[dt.datetime, int] = {}  # hours retention deleted -> their rows then
        self.damaged = False
        self.filled_gap = False  # a late row landed among counted rows: the integral may have dipped
        self.shown = 0.0
        self.start_service()

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def start_service(self) -> None:
        service = Service(self.dir, self.clock)
        self.writer, self.live = service.writer, service.live
        self.writer.listener = self

    def late_rows_coming(self, meter: str) -> None:
        self.live.late_rows_coming(meter)

    def durable(self, meter: str, rows, complete: bool) -> None:
        self.live.durable(meter, rows, complete)
        newest = max(self.durable_seconds, default=None)
        self.filled_gap |= newest is not None and any(t <= newest for t, _ in rows)
        self.durable_seconds.update(t for t, _ in rows)

    # --- what happens -------------------------------------------------------------------------

    @rule(count=st.integers(1, 200), step=st.sampled_from([1, 1, 1, 2, 7, 400]))
    def readings(self, count: int, step: int) -> None:
        for _ in range(count):
            self.writer.add("m", reading(self.meter_time))
            self.meter_time += step

    @rule(back=st.integers(1, 7200), count=st.integers(1, 300))
    def meter_set_back(self, back: int, count: int) -> None:
        """The meter's clock goes back: seconds met again (left out) and gaps filled (late rows)."""
        start = max(utc_epoch(START), self.meter_time - back)
        for t in range(start, min(start + count, self.meter_time)):
            self.writer.add("m", reading(t))

    @rule()
    def flush(self) -> None:
        self.writer.flush()

    @rule(seconds=st.sampled_from([60, 1800, 3600, 3 * 3600]))
    def host_time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.writer.tick()  # closes an hour the host clock has left behind

    @rule()
    def checkpoint(self) -> None:
        self.live.checkpoint()
        self.settle()

    @rule(clean=st.booleans())
    def restart(self, clean: bool) -> None:
        """A stop (everything flushed) or a SIGKILL (buffered rows lost), then a start."""
        if clean:
            self.writer.flush()
            self.settle()
        self.start_service()

    @rule()
    def upload(self) -> None:
        """What BigQuery would get: each closed unit's owned rows, credited in the ledger."""
        units = [u for u in hour_files(closed_files_in(self.dir))]
        if not units:
            return
        ledger = Ledger(self.dir)
        fresh = {u.key: {"rows": len(readable_rows(u)[1]), "source": u.sources[0].name}
                 for u in units if u.key not in ledger}
        if fresh:
            job = f"job-{len(ledger)}-{len(fresh)}"
            assert ledger.begin(job, {"table": "p.d.t", "hours": fresh}) == []
            ledger.commit(job, {key: {"job_id": job, **hour} for key, hour in fresh.items()})

    @rule()
    def retention_pass(self) -> None:
        before, _ = seconds_on_disk(self.dir)
        self.clock.advance(RETENTION_DAYS * 86400)
        Retention(self.dir, self.clock, RETENTION_DAYS, uploading=True).delete_expired()
        after, _ = seconds_on_disk(self.dir)
        for t in before - after:
            hour = (EPOCH + dt.timedelta(seconds=t)).replace(minute=0, second=0)
            self.deleted.setdefault(hour, 0)
        for hour in self.deleted:
            if not self.deleted[hour]:
                start = utc_epoch(hour)
                self.deleted[hour] = len([t for t in before if start <= t < start + 3600])

    @precondition(lambda self: list(self.dir.glob("*.gz")))
    @rule(data=st.data(), how=st.sampled_from(["garbage", "truncated", "empty", "body"]))
    def damaged_file(self, data, how: str) -> None:
        path = data.draw(st.sampled_from(sorted(self.dir.glob("*.gz"))))
        before, _ = seconds_on_disk(self.dir)
        damage(path, how)
        after = self.seconds_readable()
        self.lost |= self.durable_seconds & (before - after)
        self.damaged = True

    # --- what must hold -------------------------------------------------------------------------

    def settle(self) -> None:
        if self.live.restorer is not None:
            self.live.restorer.join(60)

    def seconds_readable(self) -> Set[int]:
        """Seconds the folder's files hold, read as a reader would (damaged files quarantined on the way)."""
        meter_report(self.dir, STEM, "m", UTC, use_summaries=False)
        return seconds_on_disk(self.dir)[0]

    @invariant()
    def promises_hold(self) -> None:
        seconds = self.seconds_readable()
        assert self.durable_seconds - self.lost - seconds <= self.deleted_seconds(), "a durable second was lost"
        report = meter_report(self.dir, STEM, "m", UTC)
        summaries = read_summaries(self.dir, STEM)
        deleted_rows = sum(summaries[h].rows for h in self.deleted if h in summaries)
        if self.damaged:  # an hour summarized before its files were damaged keeps its summary's rows
            assert report.rows >= len(seconds) + deleted_rows
        else:
            assert report.rows == len(seconds) + deleted_rows, "a second counted twice, or not at all"
        for hour, rows in self.deleted.items():  # made before a damage, a summary keeps the rows it saw
            assert summaries[hour].rows >= rows if self.damaged else summaries[hour].rows == rows, \
                f"hour {hour}'s summary lost rows"
        self.live.checkpoint()
        self.settle()
        self.live.save(force=True)
        energy = self.live.snapshot()["m"].energy_joules
        total = report.total().watt_seconds
        assert energy >= self.shown, "the energy shown went down"
        self.shown = energy
        if self.damaged or self.filled_gap:  # rows taken away, or a step split: it may hold a higher value
            assert energy >= total - 1e-6 * max(1.0, total)
        else:
            assert energy == pytest.approx(total, rel=1e-9, abs=1e-6), "the energy counter is not the report"
        uploaded: List[int] = []
        for unit in hour_files(closed_files_in(self.dir)):
            uploaded += [utc_epoch(dt.datetime.strptime(r["datetime"], "%Y-%m-%d %H:%M:%S")) for r in readable_rows(unit)[1]]
        _, plain_only = seconds_on_disk(self.dir)
        assert len(uploaded) == len(set(uploaded)), "a second in two upload units"
        assert set(uploaded) == seconds - plain_only, "the upload units miss a closed second"

    def deleted_seconds(self) -> Set[int]:
        found: Set[int] = set()
        for hour in self.deleted:
            start = utc_epoch(hour)
            found.update(t for t in self.durable_seconds if start <= t < start + 3600)
        return found

DataFolder.TestCase.settings = settings(max_examples=20, stateful_step_count=25, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
test_the_data_folder_keeps_its_promises_through_any_sequence_of_events = DataFolder.TestCase
