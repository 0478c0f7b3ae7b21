"""Closed hours -> BigQuery, against a real emulator through the real client library over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import pytest

from wattchecker_client.clock import Clock, FakeClock
from wattchecker_client.config import parse_config
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.transport import SetupError
from wattchecker_client.uploader import (
    BigQueryTarget,
    HourFile,
    Uploader,
    csv_body,
    hour_files,
    job_id_for,
    load_job_config,
    read_rows,
)
from wattchecker_client.writer import Writer

from .conftest import Emulator, run_cli

T0 = dt.datetime(2026, 7, 1, 0, 0, 0)
TABLE = f"{Emulator.PROJECT}.wattchecker.power"


def write_hours(data_dir: Path, hours: int, per_hour: int = 60, formats=("csv", "json"),
                meter: str = "wattchecker", stem: str = "wattchecker-data", seed: int = 1) -> list:
    """Closed hour files made by the real writer; returns every row written."""
    writer = Writer(data_dir, {meter: stem}, formats, FakeClock(T0))
    writer.recover()
    written = []
    for h in range(hours):
        for i in range(per_hour):
            m = air_conditioner(T0 + dt.timedelta(hours=h, seconds=i * (3600 // per_hour)), seed)
            writer.add(meter, m)
            written.append(m)
    writer.flush()
    for fs in writer.all_sets():
        fs.close_current()
    return written


def config_for(emulator: Emulator, data_dir: Path, **bigquery) -> object:
    settings = {"dataset_id": "wattchecker", "table_id": "power", "project_id": Emulator.PROJECT,
                "api_endpoint": emulator.url, "create_table": True, **bigquery}
    text = f"general:\n  data_dir: {json.dumps(str(data_dir))}\n  data_format: [csv, json]\n"
    text += "device:\n  address: sim://\nbigquery:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in settings.items())
    return parse_config(text)


def uploader_for(emulator, data_dir, clock=None, **bigquery) -> Uploader:
    config = config_for(emulator, data_dir, **bigquery)
    target = BigQueryTarget(config.bigquery, several_meters=False, retry_deadline=0.5)
    return Uploader(data_dir, target, clock or Clock(), max_backoff=config.bigquery.max_backoff)


def drain(uploader: Uploader) -> None:
    uploader.queue(uploader.backlog())
    while uploader.step():
        pass


def table_totals(emulator) -> tuple:
    ((count, watts),) = emulator.query(f"SELECT COUNT(*), SUM(W) FROM `{TABLE}`")
    return count, watts


# --- rows and job ids, no network ---------------------------------------------------


def test_rows_come_from_json_at_full_precision_else_from_csv(tmp_path):
    written = write_hours(tmp_path, 1, per_hour=5)
    (hour,) = hour_files(list(tmp_path.glob("*.gz")))
    assert [p.name for p in hour.sources] == [
        "wattchecker-data.json.2026-07-01_00.gz", "wattchecker-data.csv.2026-07-01_00.gz"]
    body = csv_body(read_rows(hour.sources[0]), ["datetime", "V", "mA", "W"], "x")
    assert body.decode().splitlines() == [
        f"{m.time:%Y-%m-%d %H:%M:%S},{m.volts!r},{m.milliamps!r},{m.watts!r}" for m in written]
    from_csv = csv_body(read_rows(hour.sources[1]), ["W", "datetime", "device"], "aircon")
    assert from_csv.decode().splitlines()[0] == f"{written[0].watts:.2f},{written[0].time:%Y-%m-%d %H:%M:%S},aircon"


def test_an_original_datetime_table_gets_the_same_csv_and_its_own_schema():
    """The emulator cannot load CSV into DATETIME: checked here, one level below."""
    from google.cloud import bigquery

    schema = [bigquery.SchemaField("datetime", "DATETIME"), bigquery.SchemaField("V", "FLOAT"),
              bigquery.SchemaField("mA", "FLOAT"), bigquery.SchemaField("W", "FLOAT")]
    job_config = load_job_config(bigquery, schema)
    assert job_config.source_format == "CSV" and job_config.schema == schema
    assert job_config.write_disposition == "WRITE_APPEND"
    assert job_config.skip_leading_rows == 0
    rows = [{"datetime": "2019-09-07 09:24:30", "V": "102.931", "mA": "2311.75", "W": "181.385"}]
    # BigQuery's DATETIME literal form, unchanged from the original client's files
    assert csv_body(rows, [f.name for f in schema], "x") == b"2019-09-07 09:24:30,102.931,2311.75,181.385\n"


def test_a_table_with_columns_we_do_not_write_is_a_permanent_error():
    from wattchecker_client.uploader import PermanentError

    with pytest.raises(PermanentError, match="columns this client does not write: kwh"):
        csv_body([{"datetime": "x", "V": "1", "mA": "1", "W": "1"}], ["datetime", "kwh"], "x")


def test_job_ids_are_deterministic_and_follow_content_table_hours_and_attempt():
    hour = HourFile("wattchecker-data.2026-07-01_00", "wattchecker-data", T0, 0, ())
    other = HourFile("wattchecker-data.2026-07-01_00.part1", "wattchecker-data", T0, 1, ())
    a = job_id_for("p.d.t", [hour], b"rows")
    assert a == job_id_for("p.d.t", [hour], b"rows")
    ids = {a, job_id_for("p.d.t", [hour], b"rows!"), job_id_for("p.d.u", [hour], b"rows"),
           job_id_for("p.d.t", [other], b"rows"), job_id_for("p.d.t", [hour, other], b"rows"),
           job_id_for("p.d.t", [hour], b"rows", attempt=1)}
    assert len(ids) == 6
    assert a.startswith("wattchecker_p_d_t_wattchecker-data_2026-07-01_00_")
    assert job_id_for("p.d.t", [hour, other], b"rows").startswith("wattchecker_p_d_t_wattchecker-data_2026-07-01_00_2h_")
    assert job_id_for("p.d.t", [hour], b"rows", attempt=1) == a + "_retry1"
    assert all(c.isalnum() or c in "_-" for c in a)


# --- credentials ---------------------------------------------------------------------


def test_a_missing_key_file_refuses_to_start(tmp_path):
    config = parse_config(
        "device:\n  address: sim://\nbigquery:\n  dataset_id: d\n  table_id: t\n"
        f"  service_account_json: {tmp_path / 'key.json'}\n"
    )
    with pytest.raises(SetupError, match=r"bigquery.service_account_json: cannot read .*key.json: No such file"):
        BigQueryTarget(config.bigquery, False)


def test_a_key_file_that_is_not_a_key_refuses_and_a_loose_mode_warns(tmp_path, caplog):
    key = tmp_path / "key.json"
    key.write_text('{"type": "service_account", "project_id": "p"}')
    os.chmod(key, 0o644)
    config = parse_config(
        f"device:\n  address: sim://\nbigquery:\n  dataset_id: d\n  table_id: t\n  service_account_json: {key}\n"
    )
    with pytest.raises(SetupError, match="is not a service account key"):
        BigQueryTarget(config.bigquery, False)
    assert "readable by other users (mode 644): chmod 600 it" in caplog.text
    assert "project_id" not in caplog.text  # nothing of the key is logged


# --- against the emulator -------------------------------------------------------------


def test_every_hour_lands_once_and_the_ledger_prevents_a_second_load(emulator, tmp_path):
    emulator.start()
    written = write_hours(tmp_path, 3)
    uploader = uploader_for(emulator, tmp_path)
    drain(uploader)
    assert uploader.stats.uploaded == 3 and uploader.stats.rows == len(written)
    count, watts = table_totals(emulator)
    assert count == len(written) and watts == pytest.approx(sum(m.watts for m in written))
    again = uploader_for(emulator, tmp_path)
    assert again.backlog() == []
    drain(again)
    assert table_totals(emulator)[0] == len(written)
    ledger = json.loads((tmp_path / "uploaded.json").read_text())["uploaded"]
    assert sorted(ledger) == [f"wattchecker-data.2026-07-01_0{h}" for h in range(3)]
    assert all(e["rows"] == 60 and e["source"].startswith("wattchecker-data.json.") for e in ledger.values())


def test_a_job_submitted_before_a_crash_is_adopted_not_loaded_twice(emulator, tmp_path):
    """The state a SIGKILL after submitting leaves: the job exists, the ledger does not know."""
    emulator.start()
    written = write_hours(tmp_path, 1)
    uploader = uploader_for(emulator, tmp_path)
    (hour,) = uploader.backlog()
    rows = read_rows(hour.sources[0])
    table = uploader.target.table()
    body = csv_body(rows, [f.name for f in table.schema], "wattchecker")
    uploader.target.load(body, job_id_for(uploader.target.table_ref, [hour], body))  # the "crashed" attempt
    assert table_totals(emulator)[0] == len(written)
    drain(uploader)
    assert uploader.stats.uploaded == 1
    assert table_totals(emulator)[0] == len(written)  # no second copy
    assert "wattchecker-data.2026-07-01_00" in json.loads((tmp_path / "uploaded.json").read_text())["uploaded"]


def test_a_corrupted_gzip_falls_back_to_csv_or_goes_to_failed_and_never_blocks(emulator, tmp_path, caplog):
    emulator.start()
    written = write_hours(tmp_path, 3)
    json0 = tmp_path / "wattchecker-data.json.2026-07-01_00.gz"
    json0.write_bytes(json0.read_bytes()[:40])  # hour 0: JSON truncated, CSV intact
    for path in tmp_path.glob("wattchecker-data.*.2026-07-01_01.gz"):  # hour 1: both broken
        path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    uploader = uploader_for(emulator, tmp_path)
    drain(uploader)
    assert (uploader.stats.uploaded, uploader.stats.failed) == (2, 1)
    failed = tmp_path / "failed"
    assert sorted(p.name for p in failed.iterdir()) == [
        "wattchecker-data.2026-07-01_01.reason",
        "wattchecker-data.csv.2026-07-01_01.gz",
        "wattchecker-data.json.2026-07-01_01.gz",
    ]
    reason = (failed / "wattchecker-data.2026-07-01_01.reason").read_text()
    assert "wattchecker-data.json.2026-07-01_01.gz: unreadable" in reason
    assert table_totals(emulator)[0] == len(written) - 60  # hours 0 (from CSV) and 2
    ledger = json.loads((tmp_path / "uploaded.json").read_text())["uploaded"]
    assert ledger["wattchecker-data.2026-07-01_00"]["source"] == "wattchecker-data.csv.2026-07-01_00.gz"
    assert "cannot upload wattchecker-data.2026-07-01_01, moved to" in caplog.text


def test_an_unreachable_bigquery_keeps_files_queued_and_heals(emulator, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    written = write_hours(tmp_path, 2)
    clock = FakeClock(T0)
    uploader = uploader_for(emulator, tmp_path, clock=clock, max_backoff=30)  # emulator not started yet
    uploader.queue(uploader.backlog())
    for _ in range(3):
        assert uploader.step() is False
        clock.advance(31)
    assert uploader.stats.retries == 3 and uploader.pending == 2
    assert caplog.text.count("must wait") == 1  # logged once per outage
    emulator.start()
    clock.advance(31)
    while uploader.step():
        pass
    assert uploader.pending == 0 and table_totals(emulator)[0] == len(written)
    assert "BigQuery reachable again" in caplog.text


def test_a_missing_table_waits_unless_creation_is_allowed(emulator, tmp_path, caplog):
    emulator.start()
    write_hours(tmp_path, 1)
    uploader = uploader_for(emulator, tmp_path, create_table=False)
    drain(uploader)
    assert uploader.pending == 1 and uploader.stats.failed == 0
    assert f"table {TABLE} does not exist: create it (README) or set bigquery.create_table: true" in caplog.text
    creating = uploader_for(emulator, tmp_path, create_table=True)
    drain(creating)
    assert creating.stats.uploaded == 1
    schema = {f.name: f.field_type for f in emulator.client().get_table(TABLE).schema}
    assert schema == {"datetime": "TIMESTAMP", "V": "FLOAT", "mA": "FLOAT", "W": "FLOAT"}


def test_several_meters_share_a_table_with_a_device_column(emulator, tmp_path):
    emulator.start()
    aircon = write_hours(tmp_path, 1, meter="aircon", stem="wattchecker-data-aircon", seed=1)
    fridge = write_hours(tmp_path, 1, meter="fridge", stem="wattchecker-data-fridge", seed=2)
    config = config_for(emulator, tmp_path)
    uploader = Uploader(tmp_path, BigQueryTarget(config.bigquery, several_meters=True), Clock())
    drain(uploader)
    rows = emulator.query(f"SELECT device, COUNT(*), SUM(W) FROM `{TABLE}` GROUP BY device ORDER BY device")
    assert [(d, n) for d, n, _ in rows] == [("aircon", len(aircon)), ("fridge", len(fridge))]
    assert rows[0][2] == pytest.approx(sum(m.watts for m in aircon))


# --- retention ------------------------------------------------------------------------------


def test_retention_deletes_old_hours_only_once_uploaded(emulator, tmp_path):
    emulator.start()
    write_hours(tmp_path, 3)
    clock = FakeClock(T0 + dt.timedelta(days=10, hours=2, minutes=30))  # hours 0 and 1 ended over 10 days ago
    uploader = uploader_for(emulator, tmp_path, clock=clock)
    uploader.retention_days = 10
    uploader.delete_expired()
    assert len(list(tmp_path.glob("*.gz"))) == 6  # nothing uploaded yet: nothing deleted
    drain(uploader)
    uploader.delete_expired()
    assert sorted(p.name for p in tmp_path.glob("*.gz")) == [
        "wattchecker-data.csv.2026-07-01_02.gz", "wattchecker-data.json.2026-07-01_02.gz"]


def test_retention_without_bigquery_deletes_old_hours(tmp_path):
    write_hours(tmp_path, 2)
    uploader = Uploader(tmp_path, None, FakeClock(T0 + dt.timedelta(days=31)), retention_days=30)
    uploader.delete_expired()
    assert list(tmp_path.glob("*.gz")) == [] and uploader.stats.deleted == 2


# --- the upload command ----------------------------------------------------------------


def write_config_file(path: Path, config_text: str) -> Path:
    path.write_text(config_text)
    return path


def upload_config(emulator, tmp_path) -> Path:
    text = (
        f"general:\n  data_dir: {json.dumps(str(tmp_path / 'data'))}\n  data_format: [csv, json]\n"
        "device:\n  address: sim://\n"
        f"bigquery:\n  dataset_id: wattchecker\n  table_id: power\n  project_id: {Emulator.PROJECT}\n"
        f"  api_endpoint: {emulator.url}\n  create_table: true\n"
    )
    return write_config_file(tmp_path / "config.yaml", text)


def test_upload_command_dry_run_then_upload_then_nothing_left(emulator, tmp_path):
    emulator.start()
    written = write_hours(tmp_path / "data", 3)
    config = str(upload_config(emulator, tmp_path))
    dry = run_cli("upload", "--config", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == "would upload 3 hour file(s), 180 rows; skipped 0 already uploaded; failed 0\n"
    assert not (tmp_path / "data" / "uploaded.json").exists()
    real = run_cli("upload", "--config", config)
    assert real.returncode == 0, real.stderr
    assert real.stdout == "uploaded 3 hour file(s), 180 rows in 1 load job(s); skipped 0 already uploaded; failed 0\n"
    assert table_totals(emulator)[0] == len(written)
    named = run_cli("upload", "--config", config, *map(str, (tmp_path / "data").glob("*.json.*.gz")))
    assert named.stdout == "uploaded 0 hour file(s), 0 rows in 0 load job(s); skipped 3 already uploaded; failed 0\n"
    assert table_totals(emulator)[0] == len(written)


def test_upload_command_resends_a_file_from_failed_after_it_is_fixed(emulator, tmp_path):
    emulator.start()
    write_hours(tmp_path / "data", 1)
    data = tmp_path / "data"
    good = {p.name: p.read_bytes() for p in data.glob("*.gz")}
    for path in data.glob("*.gz"):
        path.write_bytes(b"not gzip")
    config = str(upload_config(emulator, tmp_path))
    broken = run_cli("upload", "--config", config)
    assert broken.returncode == 1
    assert broken.stdout == (
        "uploaded 0 hour file(s), 0 rows in 0 load job(s); skipped 0 already uploaded; failed 1 (see failed/)\n")
    for name, content in good.items():  # the user restores the files from a backup
        (data / "failed" / name).write_bytes(content)
    again = run_cli("upload", "--config", config, *map(str, (data / "failed").glob("*.gz")))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("uploaded 1 hour file(s), 60 rows in 1 load job(s)")
    assert sorted(p.name for p in (data / "failed").iterdir()) == []
    assert len(list(data.glob("*.gz"))) == 2


def test_upload_command_with_bigquery_down_leaves_everything_queued(tmp_path):
    emulator = Emulator(tmp_path)  # never started: nothing listens there
    write_hours(tmp_path / "data", 2)
    result = run_cli("upload", "--config", str(upload_config(emulator, tmp_path)), timeout=120)
    assert result.returncode == 1
    assert result.stdout.endswith("; 2 left queued: BigQuery could not be reached\n")
    assert not (tmp_path / "data" / "uploaded.json").exists()
    assert len(list((tmp_path / "data").glob("*.gz"))) == 4


def test_an_unreadable_ledger_is_set_aside_and_rebuilt_without_double_loads(emulator, tmp_path, caplog):
    emulator.start()
    written = write_hours(tmp_path, 2)
    drain(uploader_for(emulator, tmp_path))
    (tmp_path / "uploaded.json").write_text("{ torn")
    rebuilt = uploader_for(emulator, tmp_path)
    assert "uploaded.json was unreadable" in caplog.text
    assert (tmp_path / "uploaded.json.unreadable").read_text() == "{ torn"
    drain(rebuilt)  # both hours found in BigQuery by their job ids (409), adopted
    assert rebuilt.stats.uploaded == 2
    assert table_totals(emulator)[0] == len(written)
    assert len(json.loads((tmp_path / "uploaded.json").read_text())["uploaded"]) == 2
