"""Hourly summaries: the report from summaries equals the report from every row, and outlives the rows."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wattchecker_client.clock import time_zone
from wattchecker_client.datadir import read_summaries, summaries_path
from wattchecker_client.formats import csv_line
from wattchecker_client.protocol import Measurement
from wattchecker_client.report import MeterReport, meter_report

from .conftest import run_cli, write_config

STEM = "wattchecker-data"
START = dt.datetime(2026, 3, 28, 20, 0, 0)  # the night Berlin springs forward
ZONES = [time_zone(z) for z in ("UTC", "Europe/Berlin", "Asia/Kathmandu", "America/St_Johns")]


def write_closed(data_dir: Path, rows: List[Tuple[dt.datetime, float]], part: int = 0) -> None:
    """Closed hour files as the writer leaves them (CSV, gzipped), one per UTC hour."""
    data_dir.mkdir(parents=True, exist_ok=True)
    by_hour = {}
    for when, watts in rows:
        by_hour.setdefault(when.replace(minute=0, second=0), []).append(csv_line(Measurement(when, 100.0, 1000.0, watts)))
    for hour, lines in by_hour.items():
        suffix = f".part{part}" if part else ""
        with gzip.open(data_dir / f"{STEM}.csv.{hour:%Y-%m-%d_%H}{suffix}.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def from_rows(data_dir: Path, tz: dt.tzinfo, first=None, last=None) -> MeterReport:
    """The report by a pass over every row, as before summaries (the reference)."""
    return meter_report(data_dir, STEM, "m", tz, first, last, use_summaries=False)


def assert_same(got: MeterReport, want: MeterReport) -> None:
    assert got.rows == want.rows
    assert sorted(got.days) == sorted(want.days)
    for day, total in want.days.items():
        assert got.days[day].watt_seconds == pytest.approx(total.watt_seconds, rel=1e-12, abs=1e-9)
        assert (got.days[day].covered_seconds, got.days[day].peak_watts) == (total.covered_seconds, total.peak_watts)
    assert got.hourly_seconds == want.hourly_seconds
    assert got.hourly_wh == pytest.approx(want.hourly_wh, rel=1e-12, abs=1e-9)


steps = st.one_of(st.integers(0, 6), st.integers(7, 4000))
rows_strategy = st.lists(st.tuples(steps, st.floats(0, 1500).map(lambda w: round(w, 2))), min_size=1, max_size=400)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, zone=st.sampled_from(ZONES), span=st.tuples(st.integers(0, 6), st.integers(0, 6)),
       begin=st.one_of(st.integers(3590, 3599), st.integers(0, 3599)))
def test_the_report_from_summaries_equals_the_report_from_every_row(tmp_path_factory, rows, zone, span, begin):
    data_dir = tmp_path_factory.mktemp("data")
    t, timed = START + dt.timedelta(seconds=begin), []  # often just before an hour: a step across it
    for step, watts in rows:
        t += dt.timedelta(seconds=step)
        timed.append((t, watts))
    write_closed(data_dir, timed)
    first_day = START.date() + dt.timedelta(days=min(span) - 1)
    last_day = START.date() + dt.timedelta(days=max(span) - 1)
    made = meter_report(data_dir, STEM, "m", zone)  # makes the summaries
    assert summaries_path(data_dir, STEM).exists()
    assert_same(made, from_rows(data_dir, zone))
    assert_same(meter_report(data_dir, STEM, "m", zone), from_rows(data_dir, zone))  # reads them
    assert_same(meter_report(data_dir, STEM, "m", zone, first_day, last_day),
                from_rows(data_dir, zone, first_day, last_day))


def air(hours: int, start: dt.datetime = dt.datetime(2026, 7, 1, 0, 0, 0)) -> List[Tuple[dt.datetime, float]]:
    return [(start + dt.timedelta(seconds=s), 100.0 + (s % 977) / 4) for s in range(0, hours * 3600, 2)]


def test_retention_deletes_the_rows_and_the_report_still_answers_from_summaries(tmp_path):
    write_closed(tmp_path, air(72))
    tz = time_zone("Asia/Tokyo")
    days = (dt.date(2026, 7, 2), dt.date(2026, 7, 3))
    before = meter_report(tmp_path, STEM, "m", tz, *days)
    for path in tmp_path.glob("*.gz"):
        path.unlink()  # as retention_days does
    after = meter_report(tmp_path, STEM, "m", tz, *days)
    assert after.problems == [] and after.rows == before.rows > 0
    assert_same(after, before)


@pytest.mark.process
def test_the_report_command_answers_for_deleted_days(tmp_path):
    data_dir = tmp_path / "data"
    write_closed(data_dir, air(50))
    config = write_config(tmp_path / "config.yaml", data_dir, "tcp://127.0.0.1:9")
    config.write_text(config.read_text() + "report:\n  timezone: UTC\n")
    args = ["report", "--config", str(config), "--from", "2026-07-01", "--to", "2026-07-02"]
    before = run_cli(*args)
    assert before.returncode == 0, before.stderr
    for path in data_dir.glob("*.gz"):
        path.unlink()
    after = run_cli(*args)
    assert after.returncode == 0, after.stderr
    assert after.stdout == before.stdout
    assert "2026-07-02" in after.stdout


def test_a_late_part_makes_its_hour_summary_again(tmp_path):
    write_closed(tmp_path, air(2))
    tz = time_zone("UTC")
    meter_report(tmp_path, STEM, "m", tz)
    late = [(dt.datetime(2026, 7, 1, 1, 30, 1) + dt.timedelta(seconds=s), 2000.0) for s in range(0, 60, 2)]
    write_closed(tmp_path, late, part=1)  # odd seconds the first part lacks
    assert_same(meter_report(tmp_path, STEM, "m", tz), from_rows(tmp_path, tz))
    assert read_summaries(tmp_path, STEM)[dt.datetime(2026, 7, 1, 1)].parts == (0, 1)
    assert meter_report(tmp_path, STEM, "m", tz).days[dt.date(2026, 7, 1)].peak_watts == 2000.0


def test_a_torn_summary_line_is_skipped_and_the_next_append_starts_a_line(tmp_path, caplog):
    write_closed(tmp_path, air(3))
    tz = time_zone("UTC")
    meter_report(tmp_path, STEM, "m", tz)
    path = summaries_path(tmp_path, STEM)
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    path.write_text("".join(lines[:2]) + lines[2][:40])  # a crash in the middle of the last append
    assert_same(meter_report(tmp_path, STEM, "m", tz), from_rows(tmp_path, tz))
    assert f"{path} line 3: skipped" in caplog.text
    assert sorted(read_summaries(tmp_path, STEM)) == [dt.datetime(2026, 7, 1, h) for h in range(3)]


def test_an_hour_still_being_written_is_never_taken_from_a_summary_of_its_closed_part(tmp_path):
    from wattchecker_client.clock import FakeClock
    from wattchecker_client.live import LiveState

    rows = air(2)
    write_closed(tmp_path, [r for r in rows if r[0].hour == 0 or r[0].minute < 30])
    current = [csv_line(Measurement(when, 100.0, 1000.0, w)) for when, w in rows if when.hour == 1 and when.minute >= 30]
    (tmp_path / f"{STEM}.csv").write_text("\n".join(current) + "\n")  # the same hour goes on in the plain file
    live = LiveState(FakeClock(), tmp_path, {"m": STEM})
    live.restore()  # counts, then makes the summaries it can: not hour 1's, which is still being written
    assert sorted(read_summaries(tmp_path, STEM)) == [dt.datetime(2026, 7, 1, 0)]
    tz = time_zone("UTC")
    want = from_rows(tmp_path, tz)
    assert want.rows == len(rows)
    assert_same(meter_report(tmp_path, STEM, "m", tz), want)
    assert live.snapshot()["m"].energy_joules == pytest.approx(want.total().watt_seconds, rel=1e-12)


def test_the_writer_summarizes_each_hour_it_closes_as_the_report_would(tmp_path):
    from wattchecker_client.clock import FakeClock
    from wattchecker_client.writer import Writer

    writer = Writer(tmp_path, {"m": STEM}, ("csv", "json"), FakeClock(dt.datetime(2026, 7, 1)))
    writer.recover()
    for when, watts in air(3):
        writer.add("m", Measurement(when, 100.0, 1000.0, watts))
    writer.flush()  # hours 0 and 1 closed, hour 2 current
    at_close = read_summaries(tmp_path, STEM)
    assert sorted(at_close) == [dt.datetime(2026, 7, 1, 0), dt.datetime(2026, 7, 1, 1)]
    summaries_path(tmp_path, STEM).unlink()
    tz = time_zone("UTC")
    meter_report(tmp_path, STEM, "m", tz)  # the report's own, from the files
    assert read_summaries(tmp_path, STEM) == at_close


def test_a_summary_keeps_the_hours_lowest_and_highest_volts_from_either_format(tmp_path):
    from wattchecker_client.clock import FakeClock
    from wattchecker_client.writer import Writer

    volts = [101.25, 99.5, 100.0, 102.75]
    for fmt in ("csv", "json"):
        folder = tmp_path / fmt
        writer = Writer(folder, {"m": STEM}, (fmt,), FakeClock(dt.datetime(2026, 7, 1)))
        writer.recover()
        for hour in range(2):
            for second, v in enumerate(volts):
                writer.add("m", Measurement(dt.datetime(2026, 7, 1, hour, 0, second), v - hour, 1000.0, 100.0))
        writer.add("m", Measurement(dt.datetime(2026, 7, 1, 2), 100.0, 1000.0, 100.0))
        writer.flush()  # hours 0 and 1 closed
        at_close = read_summaries(folder, STEM)
        assert [s.volts for s in at_close.values()] == [(99.5, 102.75), (98.5, 101.75)], fmt
        summaries_path(folder, STEM).unlink()
        meter_report(folder, STEM, "m", time_zone("UTC"))  # the report's own, from the files
        assert read_summaries(folder, STEM) == at_close, fmt
