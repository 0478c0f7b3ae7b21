"""The live state and its energy counter, driven by a FakeClock and a real Writer on real files."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
from pathlib import Path
from typing import List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wattchecker_client.clock import FakeClock, time_zone
from wattchecker_client.formats import FORMATTERS, watts_as_stored
from wattchecker_client.live import LiveState
from wattchecker_client.saved import ENERGY_FILE
from wattchecker_client.protocol import Measurement
from wattchecker_client.report import meter_report, parse_line
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.writer import Writer

from .service import Service

START = dt.datetime(2019, 9, 7, 9, 59, 0)
STEM = "wattchecker-data"


def kwh_of_files(data_dir: Path) -> float:
    return meter_report(data_dir, STEM, "m", time_zone("UTC")).total().kwh


class Rig(Service):
    """One 'process': a Writer on real files and a LiveState that counts what it writes."""


def readings(offsets: List[int], seed: int = 7) -> List[Measurement]:
    return [air_conditioner(START + dt.timedelta(seconds=s), seed) for s in offsets]


def test_each_row_holds_for_its_step_up_to_5_s_and_one_second_before_a_longer_step(tmp_path):
    clock = FakeClock()
    live = LiveState(clock, tmp_path, {"m": STEM})
    live.restore()
    rows = [Measurement(START + dt.timedelta(seconds=s), 100.0, 1000.0, w)
            for s, w in [(0, 100.0), (5, 200.0), (11, 400.0), (12, 800.0)]]
    for m in rows:
        live.reading("m", m)
    live.durable("m", [(int(m.time.replace(tzinfo=dt.timezone.utc).timestamp()), m.watts) for m in rows])
    assert live.snapshot()["m"].energy_joules == 0  # nothing is persisted yet
    live.save(force=True)
    # 100 W for the 5 s step, 200 W for 1 s of its 6 s step, 400 W for 1 s, 800 W (last) for 1 s
    assert live.snapshot()["m"].energy_joules == 100 * 5 + 200 + 400 + 800
    saved = json.loads((tmp_path / ENERGY_FILE).read_text())["meters"]["m"]
    runs = saved.pop("runs")  # the run detector's state after the same rows (runs.py), for a restart mid-run
    assert saved == {"stem": STEM, "credited_joules": 1100.0, "last": [1567850352, 800.0], "floor_joules": 1900.0}
    assert runs["prev"] == [1567850352, 800.0] and runs["start"] == 1567850340 and runs["peak"] == 400.0


def test_energy_is_the_reports_kwh_of_the_files_and_is_shown_only_once_they_are_on_disk(tmp_path):
    clock = FakeClock()
    rig = Rig(tmp_path, clock)
    rig.feed(readings(list(range(0, 400, 2)) + [410, 415, 421, 422]))  # crosses an hour, with gaps
    clock.advance(31)
    rig.live.checkpoint()
    assert rig.energy() == 0  # received, not flushed: a crash now would lose them
    rig.writer.flush()
    clock.advance(31)
    rig.live.checkpoint()
    assert abs(rig.energy() / 3_600_000 - kwh_of_files(tmp_path)) < 1e-12
    assert rig.energy() > 0


def test_restore_after_a_kill_gives_at_least_what_was_shown_and_exactly_the_reports_kwh(tmp_path):
    clock = FakeClock()
    first = Rig(tmp_path, clock)
    first.feed(readings(list(range(0, 200, 3))))
    first.writer.flush()
    clock.advance(31)
    first.live.checkpoint()  # persisted and shown: rows 0..198
    shown = first.energy()
    first.feed(readings(list(range(201, 300, 3))))
    first.writer.flush()  # on disk, never checkpointed
    first.feed(readings(list(range(301, 400, 3))))  # in the buffer when the process is killed
    clock.advance(5)
    first.live.checkpoint()  # not due: nothing more is saved

    second = Rig(tmp_path, clock)  # the SIGKILLed process's files and energy.json, nothing else
    restored = second.energy()
    assert restored > shown
    assert abs(restored / 3_600_000 - kwh_of_files(tmp_path)) < 1e-12
    # it carries on from the last row on disk (297): a row 3 s later holds that row for 3 s
    last = readings([297])[0]
    nxt = readings([300])[0]
    second.feed([nxt])
    second.writer.flush()
    second.live.save(force=True)
    expected = restored + last.watts * (3 - 1) + nxt.watts  # the JSON's W: the folder's union reads it
    assert abs(second.energy() - expected) < 1e-6
    assert abs(second.energy() / 3_600_000 - kwh_of_files(tmp_path)) < 1e-12


def test_no_state_file_counts_every_file_once_and_a_broken_one_does_the_same(tmp_path, caplog):
    clock = FakeClock()
    first = Rig(tmp_path, clock)
    first.feed(readings(list(range(0, 4000, 4))))
    first.writer.flush()
    first.live.save(force=True)
    total = first.energy()
    (tmp_path / ENERGY_FILE).unlink()
    # closed hours come from their summaries: never below what was shown, and equal but for rounding
    assert total <= Rig(tmp_path, clock).energy() == pytest.approx(total, rel=1e-12)
    (tmp_path / ENERGY_FILE).write_text('{"version": 1, "meters": {"m": {"stem": "wattchecker-data", "cred')
    assert total <= Rig(tmp_path, clock).energy() == pytest.approx(total, rel=1e-12)
    assert "energy.json: unreadable" in caplog.text
    # restored once, saved again: a restart reads only the state file
    assert json.loads((tmp_path / ENERGY_FILE).read_text())["meters"]["m"]["credited_joules"] > 0


def test_a_restore_in_the_background_joins_the_rows_read_meanwhile(tmp_path):
    clock = FakeClock()
    first = Rig(tmp_path, clock)
    first.feed(readings(list(range(0, 3000, 2))))
    first.writer.flush()
    first.live.save(force=True)
    saved = first.energy()
    first.feed(readings(list(range(3002, 4000, 2))))  # on disk, newer than energy.json
    first.writer.flush()

    writer = Writer(tmp_path, {"m": STEM}, ("csv", "json"), clock, buffer_seconds=3600)
    writer.recover()
    live = LiveState(clock, tmp_path, {"m": STEM})
    writer.listener = live
    live.restore({"m": writer.last_time("m")}, background=True)
    during = live.snapshot()["m"]
    assert during.energy_known and saved <= during.energy_joules
    # The readers go on meanwhile: rows appended to the plain file, its hour closed, new hours.
    for m in readings(list(range(4001, 9000, 3))):
        writer.add("m", m)
        live.reading("m", m)
        if m.time.second == 0:
            writer.flush()
            live.checkpoint()
    writer.flush()
    live.restorer.join(30)
    live.save(force=True)
    assert abs(live.snapshot()["m"].energy_joules / 3_600_000 - kwh_of_files(tmp_path)) < 1e-9


def test_without_a_saved_energy_it_is_unknown_until_the_files_are_counted(tmp_path):
    clock = FakeClock()
    first = Rig(tmp_path, clock)
    first.feed(readings(list(range(0, 600, 2))))
    first.writer.flush()
    (tmp_path / ENERGY_FILE).unlink()
    live = LiveState(clock, tmp_path, {"m": STEM})
    gate = threading.Lock()
    gate.acquire()
    live._finish_restore, finish = (lambda *args: (gate.acquire(), finish(*args))), live._finish_restore
    on_disk = Writer(tmp_path, {"m": STEM}, ("csv", "json"), clock)
    on_disk.recover()
    live.restore({"m": on_disk.last_time("m")}, background=True)
    assert not live.snapshot()["m"].energy_known
    gate.release()
    live.restorer.join(30)
    assert live.snapshot()["m"].energy_known
    assert abs(live.snapshot()["m"].energy_joules / 3_600_000 - kwh_of_files(tmp_path)) < 1e-12


def test_files_older_than_the_saved_energy_never_take_it_down(tmp_path):
    clock = FakeClock()
    first = Rig(tmp_path, clock)
    first.feed(readings(list(range(1000, 1600, 2))))
    first.writer.flush()
    first.live.save(force=True)
    saved = first.energy()
    for path in tmp_path.glob("wattchecker-data*"):  # an older backup of the data folder, say
        path.unlink()
    second = Rig(tmp_path, clock)
    assert second.energy() == saved
    seen = []
    # the day before at standby (under 1 W, while the saved last row was the compressor's), then on past it
    for start in list(range(-18 * 3600, -18 * 3600 + 1000, 100)) + list(range(2000, 2600, 100)):
        second.feed(readings(list(range(start, start + 100, 2))))
        second.writer.flush()
        second.live.save(force=True)
        seen.append(second.energy())
    assert seen == sorted(seen) and seen[0] == saved < seen[-1]


def test_the_energy_shown_never_decreases_across_restarts_gaps_and_kills(tmp_path):
    clock = FakeClock()
    rng = random.Random(3)
    rig = Rig(tmp_path, clock)
    seen = [rig.energy()]
    second = 0
    for round_ in range(40):
        batch = []
        for _ in range(rng.randint(1, 60)):
            second += rng.choice([1, 1, 2, 5, 6, 30])
            batch.append(air_conditioner(START + dt.timedelta(seconds=second), 7))
        rig.feed(batch)
        if rng.random() < 0.6:
            rig.writer.flush()
        clock.advance(rng.choice([1, 10, 31]))
        rig.live.checkpoint()
        seen.append(rig.energy())
        if rng.random() < 0.2:  # a SIGKILL: buffered rows are lost; the next reader resumes after the files
            rig = Rig(tmp_path, clock)
            seen.append(rig.energy())
    assert seen == sorted(seen)
    assert seen[-1] > 0


def test_wait_wakes_on_a_reading_and_history_keeps_the_newest(tmp_path):
    clock = FakeClock()
    live = LiveState(clock, tmp_path, {"m": STEM}, history_seconds=3)
    version = live.wait(0, 0)
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(live.wait(version, 30)))
    waiter.start()
    for m in readings([0, 1, 2, 3, 4]):
        live.reading("m", m)
    waiter.join(60)
    assert woke and woke[0] > version
    assert live.history("m") == [(1567850340 + s, m.watts) for s, m in zip([2, 3, 4], readings([2, 3, 4]))]
    live.connected("m")
    state = live.snapshot()["m"]
    assert state.connected and state.since == clock.now() and state.measurement == readings([4])[0]
    live.disconnected("m")
    assert not live.snapshot()["m"].connected


@given(st.floats(min_value=0, max_value=2800, allow_nan=False), st.sampled_from([["csv"], ["json"], ["csv", "json"]]))
def test_live_watts_are_the_watts_the_report_reads_back(watts, data_format):
    """The energy counter and the report must integrate the very same W, in either file format."""
    m = Measurement(dt.datetime(2026, 7, 2, 9, 24, 30), 100.5, 250.0, watts)
    fmt = "json" if "json" in data_format else "csv"  # the union reads JSON's W where both formats hold it
    assert watts_as_stored(data_format)(m) == parse_line(FORMATTERS[fmt](m))[1]


def three_hours_saved(data_dir: Path, clock: FakeClock) -> float:
    """Three closed hours and a current one on disk, their energy saved; that energy."""
    first = Rig(data_dir, clock)
    first.feed(readings(list(range(0, 3 * 3600, 3))))
    first.writer.flush()
    first.live.save(force=True)
    return first.energy()


def test_a_lost_state_file_after_retention_restores_the_whole_count_from_summaries(tmp_path):
    clock = FakeClock()
    total = three_hours_saved(tmp_path, clock)
    (tmp_path / ENERGY_FILE).unlink()
    Rig(tmp_path, clock)  # counts the files once, and leaves their summaries
    (tmp_path / ENERGY_FILE).unlink()
    closed = list(tmp_path.glob("*.gz"))
    assert len(closed) == 2 * 3
    for path in closed:
        path.unlink()  # as retention_days does
    assert total <= Rig(tmp_path, clock).energy() == pytest.approx(total, rel=1e-12)


def test_a_restart_reads_only_the_hours_since_its_checkpoint(tmp_path, caplog):
    """Neither the older hour files nor their summaries are opened: a restart after years costs what one after a day does."""
    clock = FakeClock()
    total = three_hours_saved(tmp_path, clock)
    oldest = sorted(tmp_path.glob("*.gz"))[:2]  # the first hour, both formats
    for path in oldest:
        path.write_bytes(b"not gzip")  # would be a warning, and no rows, if it were read
    with open(tmp_path / f"{STEM}.summaries.jsonl", "a") as f:
        f.write('{"hour":"2019-09-07_09","not":"a summary"}\n')  # likewise
    assert Rig(tmp_path, clock).energy() == total
    assert "unreadable" not in caplog.text and "not a summary" not in caplog.text
