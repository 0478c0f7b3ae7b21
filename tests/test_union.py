"""The data folder is the union of its files: each meter-second counts once, whatever state a crash,
a late row, retention or a damaged file left it in (issue 25's symptoms, each with its own test)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
from pathlib import Path
from typing import List

import pytest

from wattchecker_client.clock import FakeClock, time_zone, utc_epoch
from wattchecker_client.datadir import read_summaries
from wattchecker_client.formats import csv_line, json_line
from wattchecker_client.protocol import Measurement
from wattchecker_client.report import meter_report
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.upload.hours import hour_files, readable_rows
from wattchecker_client.upload.ledger import Ledger
from wattchecker_client.upload.retention import Retention

from .service import Service

STEM = "wattchecker-data"
H = dt.datetime(2026, 7, 1, 10, 0, 0)
UTC = time_zone("UTC")


def rows(start: dt.datetime, seconds: int, step: int = 1, seed: int = 5) -> List[Measurement]:
    return [air_conditioner(start + dt.timedelta(seconds=s), seed) for s in range(0, seconds, step)]


class Rig(Service):
    def energy(self) -> float:
        return self.settled_energy()


def report_ws(data_dir: Path) -> float:
    return meter_report(data_dir, STEM, "m", UTC).total().watt_seconds


def gz_lines(path: Path) -> List[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines(keepends=True)


def write_gz(path: Path, lines: List[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(lines))


# --- a kill while an hour closes -------------------------------------------------------------


def test_a_kill_between_the_two_formats_closes_counts_each_second_once(tmp_path, caplog):
    """CSV of the hour already .gz, its JSON still the plain file: the restore read both (9.6 J too much)."""
    caplog.set_level(logging.INFO)
    clock = FakeClock(H + dt.timedelta(minutes=45))
    first = Rig(tmp_path, clock)
    first.write(rows(H, 2400))
    csv = next(fs for fs in first.writer.sets["m"] if fs.format == "csv")
    csv.close_current()  # ... and the SIGKILL lands before the JSON's close
    assert (tmp_path / f"{STEM}.csv.2026-07-01_10.gz").exists() and (tmp_path / f"{STEM}.json").exists()
    (tmp_path / "energy.json").unlink(missing_ok=True)
    second = Rig(tmp_path, clock)
    assert meter_report(tmp_path, STEM, "m", UTC).rows == 2400
    assert second.energy() == pytest.approx(report_ws(tmp_path), rel=1e-12)
    assert "(2400 rows counted from the files)" in caplog.text


# --- formats that disagree --------------------------------------------------------------------


def two_formats_one_short(data_dir: Path, short: str) -> List[Measurement]:
    """A closed hour whose ``short`` format lacks its last 180 rows (a kill between two appends)."""
    measurements = rows(H, 3600)
    data_dir.mkdir(exist_ok=True)
    for fmt, line in (("csv", csv_line), ("json", json_line)):
        kept = measurements[:3420] if fmt == short else measurements
        write_gz(data_dir / f"{STEM}.{fmt}.2026-07-01_10.gz", [line(m) + "\n" for m in kept])
    return measurements


@pytest.mark.parametrize("short", ["csv", "json"])
def test_formats_that_disagree_are_read_as_their_union_by_the_report_and_the_upload(tmp_path, short):
    measurements = two_formats_one_short(tmp_path, short)
    report = meter_report(tmp_path, STEM, "m", UTC)
    assert report.rows == 3600 and report.total().covered_seconds == 3600
    (unit,) = hour_files(list(tmp_path.glob("*.gz")))
    _, uploaded = readable_rows(unit)
    assert [r["datetime"] for r in uploaded] == [m.time.strftime("%Y-%m-%d %H:%M:%S") for m in measurements]
    if short == "csv":  # where JSON holds the second, its full precision goes up
        assert [float(r["W"]) for r in uploaded] == [m.watts for m in measurements]
    else:
        assert [float(r["W"]) for r in uploaded[:3420]] == [m.watts for m in measurements[:3420]]
        assert [r["W"] for r in uploaded[3420:]] == [f"{m.watts:.2f}" for m in measurements[3420:]]


# --- a damaged gzip on the SD card ------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"this is not a gzip file\n" * 10)
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "body":  # a valid header, a damaged body: zlib.error, not BadGzipFile
        path.write_bytes(data[:10] + bytes(b ^ 0x5A for b in data[10:-8]) + data[-8:])


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "body"])
def test_a_damaged_closed_file_goes_to_failed_and_the_writer_starts(tmp_path, caplog, how, fmt):
    clock = FakeClock(H + dt.timedelta(hours=2))
    first = Rig(tmp_path, clock)
    first.write(rows(H, 3600 + 600, step=2))  # hour 10 closed, hour 11 current
    bad = tmp_path / f"{STEM}.{fmt}.2026-07-01_10.gz"
    damage(bad, how)
    (tmp_path / f"{STEM}.summaries.jsonl").unlink()
    caplog.clear()
    second = Rig(tmp_path, clock)  # died with an uncaught zlib.error at start-up
    assert not bad.exists() and (tmp_path / "failed" / bad.name).exists()
    assert (tmp_path / "failed" / (bad.name + ".reason")).read_text().startswith("damaged: ")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and bad.name in r.getMessage()]
    second.write(rows(H + dt.timedelta(minutes=70), 60))  # and it keeps writing
    report = meter_report(tmp_path, STEM, "m", UTC)
    assert report.rows == 1800 + 300 + 60  # the other format holds every second of the damaged hour


def test_a_damaged_file_is_warned_about_once_whoever_meets_it(tmp_path, caplog):
    clock = FakeClock(H + dt.timedelta(hours=2))
    Rig(tmp_path, clock).write(rows(H, 3600 + 60, step=2))
    damage(tmp_path / f"{STEM}.json.2026-07-01_10.gz", "body")
    (tmp_path / f"{STEM}.summaries.jsonl").unlink()
    caplog.clear()
    for _ in range(3):
        meter_report(tmp_path, STEM, "m", UTC)
    assert len([r for r in caplog.records if "damaged" in r.getMessage()]) == 1


# --- one format unreadable, no summary yet ------------------------------------------------------


def test_an_hour_with_one_unreadable_format_is_summarized_before_retention_deletes_it(tmp_path):
    measurements = rows(H, 3600, step=3)
    for fmt, line in (("csv", csv_line), ("json", json_line)):
        write_gz(tmp_path / f"{STEM}.{fmt}.2026-07-01_10.gz", [line(m) + "\n" for m in measurements])
    before = report_ws(tmp_path)
    damage(tmp_path / f"{STEM}.csv.2026-07-01_10.gz", "truncated")
    (tmp_path / f"{STEM}.summaries.jsonl").unlink()  # as after an upgrade, or a crash before the summary
    retention = Retention(tmp_path, FakeClock(H + dt.timedelta(days=31)), 30, uploading=False)
    assert retention.delete_expired() == 1
    assert list(tmp_path.glob("*.gz")) == []
    assert H in read_summaries(tmp_path, STEM)
    after = meter_report(tmp_path, STEM, "m", UTC)
    assert after.rows == 1200 and after.total().watt_seconds == pytest.approx(before, rel=1e-12)


# --- retention and late parts ---------------------------------------------------------------------


def credit(data_dir: Path, *keys: str) -> None:
    ledger = Ledger(data_dir)
    hours = {key: {"rows": 1, "source": "x"} for key in keys}
    ledger.begin("job-" + keys[0], {"table": "p.d.t", "hours": hours})
    ledger.commit("job-" + keys[0], {key: {"job_id": "job-" + keys[0], **hour} for key, hour in hours.items()})


def test_retention_keeps_an_hour_whose_late_part_is_not_uploaded_yet(tmp_path):
    """Part 0 deleted while .part1 waited: the summary rebuilt from .part1 alone won (1.85 MJ -> 50 kJ)."""
    clock = FakeClock(H + dt.timedelta(hours=3))
    rig = Rig(tmp_path, clock)
    hole = H + dt.timedelta(hours=1)
    rig.write(rows(H, 3600) + [m for m in rows(hole, 3600 + 60) if not 600 <= (m.time - hole).total_seconds() < 1200])
    rig.write(rows(hole + dt.timedelta(seconds=600), 600))  # the hole's rows, late: hour 11's .part1
    assert (tmp_path / f"{STEM}.csv.2026-07-01_11.part1.gz").exists()
    whole = meter_report(tmp_path, STEM, "m", UTC)
    credit(tmp_path, f"{STEM}.2026-07-01_10", f"{STEM}.2026-07-01_11")  # part 0 uploaded, part 1 not yet
    retention = Retention(tmp_path, FakeClock(hole + dt.timedelta(days=31)), 30, uploading=True)
    assert retention.delete_expired() == 1  # hour 10 only
    assert (tmp_path / f"{STEM}.csv.2026-07-01_11.gz").exists()  # part 0 stays while part 1 waits
    credit(tmp_path, f"{STEM}.2026-07-01_11.part1")
    assert retention.delete_expired() == 1
    assert not list(tmp_path.glob("*2026-07-01_1[01]*.gz"))
    after = meter_report(tmp_path, STEM, "m", UTC)  # the summaries stand for both hours, whole
    assert after.rows == whole.rows == 2 * 3600 + 60
    assert after.total().watt_seconds == pytest.approx(whole.total().watt_seconds, rel=1e-12)


# --- late rows for an hour retention deleted ------------------------------------------------------


def test_late_rows_for_a_deleted_hour_are_kept_aside_and_counted_nowhere(tmp_path, caplog):
    clock = FakeClock(H + dt.timedelta(days=31))
    rig = Rig(tmp_path, clock)
    hour = [m for m in rows(H, 3600) if (m.time - H).total_seconds() % 10]  # a row every 10 s missing
    rig.write(hour + rows(H + dt.timedelta(hours=1), 60))
    retention = Retention(tmp_path, clock, 30, uploading=False)
    assert retention.delete_expired() == 1
    summary = read_summaries(tmp_path, STEM)[H]
    shown, reported = rig.energy(), report_ws(tmp_path)
    rig.write([air_conditioner(H + dt.timedelta(seconds=s), 5) for s in range(0, 3600, 10)])  # the missing rows
    assert not (tmp_path / f"{STEM}.csv.2026-07-01_10.gz").exists()  # never a fresh part 0 (its key is credited)
    aside = sorted(p.name for p in (tmp_path / "failed").glob("*.gz"))
    assert aside == [f"{STEM}.csv.2026-07-01_10.gz", f"{STEM}.json.2026-07-01_10.gz"]
    assert len(gz_lines(tmp_path / "failed" / aside[0])) == 360
    assert read_summaries(tmp_path, STEM)[H] == summary
    assert report_ws(tmp_path) == pytest.approx(reported, rel=1e-12)
    assert rig.energy() == pytest.approx(shown, rel=1e-12)
    assert "whose files are gone and whose summary stands for it" in caplog.text


# --- seconds met again after a meter set-back -----------------------------------------------------


def test_seconds_a_meter_set_back_repeats_are_left_out_and_counted_once(tmp_path):
    """Older than the reader's one-hour memory: the writer leaves them out, the energy counted them again."""
    clock = FakeClock(H + dt.timedelta(hours=3))
    rig = Rig(tmp_path, clock)
    rig.write(rows(H, 2 * 3600 + 60))
    first = rig.energy()
    assert first == pytest.approx(report_ws(tmp_path), rel=1e-12)
    rig.write(rows(H + dt.timedelta(minutes=20), 3 * 3600, seed=6))  # the meter set back 100 minutes
    assert rig.energy() == pytest.approx(report_ws(tmp_path), rel=1e-12)
    assert meter_report(tmp_path, STEM, "m", UTC).rows == 20 * 60 + 3 * 3600


def test_a_late_row_in_a_gap_is_counted_by_a_recount_never_twice(tmp_path):
    clock = FakeClock(H + dt.timedelta(hours=2))
    rig = Rig(tmp_path, clock)
    rig.write([m for m in rows(H, 3600) if not 1000 <= (m.time - H).total_seconds() < 1100])
    rig.write(rows(H + dt.timedelta(seconds=1000), 100))  # the gap's rows, late
    assert rig.energy() == pytest.approx(report_ws(tmp_path), rel=1e-12)
    assert meter_report(tmp_path, STEM, "m", UTC).rows == 3600
    saved = json.loads((tmp_path / "energy.json").read_text())["meters"]["m"]
    assert saved["last"][0] == utc_epoch(H + dt.timedelta(seconds=3599))


@pytest.mark.process
def test_run_starts_and_keeps_reading_with_closed_files_replaced_by_garbage_truncated_or_empty(
        simulator, daemons, tmp_path):
    """A real service: one damaged file of each kind, each moved to failed/ with one warning, and on it reads."""
    from .conftest import run_cli, run_until_closed_hours, wait_for
    from .datacheck import closed_hours

    config, data_dir = run_until_closed_hours(simulator, daemons, tmp_path, "3", 3)
    hours = closed_hours(data_dir)
    # The newest hour's files are read at start-up (the writer's recovery finds the last second on disk).
    bad = [data_dir / hours[-1], data_dir / hours[-1].replace(".csv.", ".json."), data_dir / hours[0]]
    for path, how in zip(bad, ("garbage", "truncated", "empty")):
        damage(path, how)
    (data_dir / f"{STEM}.summaries.jsonl").unlink()  # so whoever reads those hours reads their files
    second = daemons(config, tmp_path)
    wait_for(lambda: len(closed_hours(data_dir)) >= len(hours) + 1, timeout=120, what="two more closed hours")
    assert second.stop() == 0
    log = second.err_path.read_text()
    for path in bad[:2]:
        assert not path.exists() and (data_dir / "failed" / path.name).exists()
        assert len([line for line in log.splitlines() if "WARNING" in line and f"{path.name}: damaged" in line]) == 1
    assert "Traceback" not in log
    report = run_cli("report", "--config", str(config))  # the older hour's file is met by the report first
    assert report.returncode == 0, report.stderr
    assert not bad[2].exists() and (data_dir / "failed" / bad[2].name).exists()
    assert f"{bad[2].name}: damaged" in report.stderr + report.stdout


def test_an_hour_whose_every_file_was_damaged_keeps_its_summarys_energy_across_a_restart(tmp_path):
    """Found by the folder-state test: the restart counted nothing up to the newest file row (there was none)."""
    clock = FakeClock(H + dt.timedelta(hours=3))
    first = Rig(tmp_path, clock)
    first.write(rows(H, 60))
    first.writer.tick()  # the host clock closes the hour; its summary is made
    first.energy()
    for path in tmp_path.glob("*.gz"):
        damage(path, "garbage")
    meter_report(tmp_path, STEM, "m", UTC)  # both files quarantined on the way
    second = Rig(tmp_path, clock)
    second.write(rows(H + dt.timedelta(hours=1), 120, step=10))
    assert second.energy() == pytest.approx(report_ws(tmp_path), rel=1e-12)
    assert meter_report(tmp_path, STEM, "m", UTC).rows == 60 + 12
