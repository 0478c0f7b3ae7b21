"""Closed hours -> BigQuery, against a real emulator through the real client library over HTTP."""

from __future__ import annotations

import datetime as dt
import gzip
import http.client
import http.server
import json
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Optional

import pytest

from wattchecker_client.clock import Clock, FakeClock
from wattchecker_client.config import parse_config
from wattchecker_client.errors import SetupError
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.upload.bigquery import BigQueryTarget, classify, load_job_config, missing_role
from wattchecker_client.upload.errors import AccessDenied, PermanentError, TransientError
from wattchecker_client.upload.hours import HourFile, csv_body, hour_files, job_id_for, read_rows
from wattchecker_client.upload.ledger import Ledger, read_ledger
from wattchecker_client.upload.retention import Retention
from wattchecker_client.upload.uploader import Uploader
from wattchecker_client.writer import ClosedFile, Writer

from .conftest import Emulator, run_cli, tmpfs

DENIALS = {
    # what BigQuery answers a service account without the role, by what it was asked
    "jobs": ("POST", "/upload/bigquery/v2/projects/",
             "Access Denied: Project test-project: User does not have bigquery.jobs.create permission "
             "in project test-project."),
    "tables": ("GET", "/bigquery/v2/projects/test-project/datasets/wattchecker/tables/power",
               "Access Denied: Table test-project:wattchecker.power: Permission bigquery.tables.get denied "
               "on table test-project:wattchecker.power (or it may not exist)."),
}


class BigQueryProxy:
    """A loopback HTTP proxy in front of the emulator: counts load jobs, can deny like IAM does,
    and can hold a load's answer.

    The emulator has no job listing and never answers 403; real requests from the
    real client library pass through here unchanged otherwise. With `hold_loads()`,
    a load's rows reach the emulator but its answer waits until `release()`: the load is
    in flight for as long as a test needs, however fast the machine.
    """

    HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}

    def __init__(self, upstream: Emulator) -> None:
        self.upstream = upstream
        self.load_requests = 0  # every attempt to start a load job, 409s included
        self.loads = 0  # load jobs the server accepted
        self.denied = 0
        self.deny: Optional[str] = None  # a key of DENIALS
        self.holding = False
        self.held = threading.Event()  # a load's answer is being held
        self.released = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def relay(self) -> None:
                proxy.relay(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = relay

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def relay(self, request) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        starts_load = request.command == "POST" and request.path.startswith("/upload/")
        # the request carrying the rows: a resumable upload's PUT, or a one-shot multipart POST
        sends_rows = request.path.startswith("/upload/") and (
            request.command == "PUT" or "uploadType=multipart" in request.path)
        denial = DENIALS.get(self.deny)
        if denial and request.command == denial[0] and request.path.startswith(denial[1]):
            self.denied += 1
            error = {"code": 403, "message": denial[2], "status": "PERMISSION_DENIED",
                     "errors": [{"message": denial[2], "domain": "global", "reason": "accessDenied"}]}
            return self.answer(request, 403, [("Content-Type", "application/json")], json.dumps({"error": error}).encode())
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=600)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP}
        upstream.request(request.command, request.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        if starts_load:
            self.load_requests += 1
            self.loads += response.status == 200
        if sends_rows and self.holding:
            self.held.set()
            self.released.wait(timeout=600)
        self.answer(request, response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in self.HOP], data)

    @staticmethod
    def answer(request, status: int, headers, data: bytes) -> None:
        request.send_response(status)
        for key, value in headers:
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def hold_loads(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        self.released.set()

    def __enter__(self) -> "BigQueryProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(emulator):
    """The emulator, started, behind a counting proxy."""
    with BigQueryProxy(emulator.start()) as front:
        yield front

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


def test_the_service_leaves_an_hour_the_writer_is_closing_in_another_format_to_its_announcement(tmp_path):
    """Started while the writer is between closing the JSON and the CSV, the backlog must not take the JSON."""
    writer = Writer(tmp_path, {"wattchecker": "wattchecker-data"}, ("csv", "json"), FakeClock(T0))
    writer.recover()
    for i in range(5):
        writer.add("wattchecker", air_conditioner(T0 + dt.timedelta(seconds=i)))
    writer.flush()
    json_set, csv_set = writer.sets["wattchecker"]  # the JSON first (docs/data-folder.md)
    json_set.close_current()  # the CSV's plain file still holds the hour
    uploader = Uploader(tmp_path, None, Clock())
    assert [h.key for h in uploader.backlog()] == ["wattchecker-data.2026-07-01_00"]  # `upload` would take it
    assert uploader.backlog(settled_only=True) == []
    csv_set.close_current()
    (hour,) = uploader.backlog(settled_only=True)
    assert [p.name for p in hour.sources] == [
        "wattchecker-data.json.2026-07-01_00.gz", "wattchecker-data.csv.2026-07-01_00.gz"]


def test_a_table_with_columns_we_do_not_write_is_a_permanent_error():
    from wattchecker_client.upload.errors import PermanentError

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
    assert "readable by other users (mode 644): chmod o-rwx it" in caplog.text
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
    ledger = read_ledger(tmp_path)["uploaded"]
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
    assert "wattchecker-data.2026-07-01_00" in read_ledger(tmp_path)["uploaded"]


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
    failed = tmp_path / "failed"  # each damaged file quarantined with its reason, and the hour's own reason
    assert sorted(p.name for p in failed.iterdir()) == [
        "wattchecker-data.2026-07-01_01.reason",
        "wattchecker-data.csv.2026-07-01_01.gz",
        "wattchecker-data.csv.2026-07-01_01.gz.reason",
        "wattchecker-data.json.2026-07-01_00.gz",
        "wattchecker-data.json.2026-07-01_00.gz.reason",
        "wattchecker-data.json.2026-07-01_01.gz",
        "wattchecker-data.json.2026-07-01_01.gz.reason",
    ]
    assert "no file of it can be read" in (failed / "wattchecker-data.2026-07-01_01.reason").read_text()
    assert "damaged: EOFError" in (failed / "wattchecker-data.json.2026-07-01_00.gz.reason").read_text()
    assert table_totals(emulator)[0] == len(written) - 60  # hours 0 (from CSV) and 2
    ledger = read_ledger(tmp_path)["uploaded"]
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
    assert f"table {TABLE} does not exist: create it (docs/bigquery.md) or set bigquery.create_table: true" in caplog.text
    creating = uploader_for(emulator, tmp_path, create_table=True)
    drain(creating)
    assert creating.stats.uploaded == 1
    table = emulator.client().get_table(TABLE)
    assert {f.name: f.field_type for f in table.schema} == {
        "datetime": "TIMESTAMP", "V": "FLOAT", "mA": "FLOAT", "W": "FLOAT", "device": "STRING"}
    assert (table.time_partitioning.type_, table.time_partitioning.field) == ("DAY", "datetime")
    assert table.clustering_fields == ["device"]  # other Pis may load into it too (README "Several Pis")


def test_a_table_with_columns_we_do_not_write_keeps_every_hour_queued(emulator, tmp_path, caplog):
    """The table's fault, not the files': nothing may go to failed/."""
    from google.cloud import bigquery

    emulator.start()
    write_hours(tmp_path, 2, per_hour=5)
    client = emulator.client()
    client.create_dataset(f"{Emulator.PROJECT}.wattchecker")
    client.create_table(bigquery.Table(TABLE, schema=[bigquery.SchemaField("datetime", "TIMESTAMP"),
                                                      bigquery.SchemaField("kwh", "FLOAT")]))
    uploader = uploader_for(emulator, tmp_path)
    drain(uploader)
    assert uploader.pending == 2 and uploader.stats.failed == 0 and not (tmp_path / "failed").exists()
    assert f"table {TABLE} has columns this client does not write: kwh" in caplog.text


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
    table = emulator.client().get_table(TABLE)  # created by the client: a day's query reads one partition
    assert (table.time_partitioning.type_, table.time_partitioning.field) == ("DAY", "datetime")
    assert table.clustering_fields == ["device"]
    assert uploader.stats.jobs == 2  # one per meter: meters never share a job


# --- batches and the ledger written ahead -------------------------------------------------------


def old_ledger(data_dir: Path, hours: int) -> dict:
    """``uploaded.json`` as the client wrote it before the journal: the whole ledger in one file."""
    entries = {f"wattchecker-data.{T0 + dt.timedelta(hours=h):%Y-%m-%d_%H}": {
        "job": f"job-{h // 24}", "rows": 3600, "source": f"wattchecker-data.json.{T0 + dt.timedelta(hours=h):%Y-%m-%d_%H}.gz"}
        for h in range(hours)}
    data = {"version": 2, "uploaded": entries, "pending": {}}
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "uploaded.json").write_text(json.dumps(data, indent=1, sort_keys=True))
    return data


def one_uploaded_hour(data_dir: Path, hour: int) -> int:
    """Bytes the ledger's files grew by for one more hour written ahead and credited."""
    from wattchecker_client.upload.ledger import Ledger

    ledger = Ledger(data_dir)
    key = f"wattchecker-data.{T0 + dt.timedelta(hours=hour):%Y-%m-%d_%H}"
    before = {p.name: (p.stat().st_ino, p.stat().st_size) for p in data_dir.glob("uploaded.json*")}
    assert ledger.begin("job-new", {"hours": {key: {"rows": 3600}}}) == []
    ledger.commit("job-new", {key: {"job": "job-new", "rows": 3600, "source": "s"}})
    after = {p.name: (p.stat().st_ino, p.stat().st_size) for p in data_dir.glob("uploaded.json*")}
    assert after["uploaded.json"] == before["uploaded.json"]  # the snapshot is not rewritten
    assert key in read_ledger(data_dir)["uploaded"]
    return after["uploaded.json.journal"][1] - before.get("uploaded.json.journal", (0, 0))[1]


def test_an_uploaded_hour_appends_the_same_bytes_beside_a_year_or_five_of_ledger(tmp_path):
    one, five = tmp_path / "one", tmp_path / "five"
    old_ledger(one, 8760)
    old_ledger(five, 5 * 8760)
    assert one_uploaded_hour(one, 5 * 8760) == one_uploaded_hour(five, 5 * 8760) > 0


def test_an_upgraded_ledger_keeps_its_hours_and_compacts_the_journal_at_start_up(tmp_path):
    data = old_ledger(tmp_path, 48)
    one_uploaded_hour(tmp_path, 48)
    assert read_ledger(tmp_path)["uploaded"] == {**data["uploaded"], "wattchecker-data.2026-07-03_00": {
        "job": "job-new", "rows": 3600, "source": "s"}}
    uploader = Uploader(tmp_path, None, FakeClock(T0))  # a restart
    assert len(uploader.ledger) == 49
    assert (tmp_path / "uploaded.json.journal").read_bytes() == b""
    assert len(json.loads((tmp_path / "uploaded.json").read_text())["uploaded"]) == 49


def test_a_torn_journal_line_is_left_and_the_next_event_starts_a_line(tmp_path, caplog):
    old_ledger(tmp_path, 2)
    one_uploaded_hour(tmp_path, 2)
    journal = tmp_path / "uploaded.json.journal"
    journal.write_bytes(journal.read_bytes() + b'{"begin":"job-torn","ba')  # a crash mid-append
    from wattchecker_client.upload.ledger import Ledger

    ledger = Ledger(tmp_path, compact=False)
    assert len(ledger) == 3 and ledger.pending() == {}
    assert ledger.begin("job-4", {"hours": {"wattchecker-data.2026-07-01_03": {}}}) == []
    ledger.commit("job-4", {"wattchecker-data.2026-07-01_03": {"job": "job-4"}})
    assert len(read_ledger(tmp_path)["uploaded"]) == 4
    assert "skipped a line that is not an event" in caplog.text


def ledger_of(data_dir: Path) -> dict:
    return read_ledger(data_dir)


def test_a_30_day_backlog_of_one_meter_takes_30_load_jobs_one_per_utc_day(proxy, tmp_path):
    written = write_hours(tmp_path, 30 * 24, per_hour=1)
    uploader = uploader_for(proxy, tmp_path)
    drain(uploader)
    assert proxy.loads == uploader.stats.jobs == 30  # 720 before batching
    assert table_totals(proxy.upstream)[0] == len(written) == 720
    ledger = ledger_of(tmp_path)
    assert len(ledger["uploaded"]) == 720 and ledger["pending"] == {}
    days = {}
    for key, entry in ledger["uploaded"].items():
        days.setdefault(entry["job_id"], set()).add(key.split(".")[1][:10])
    assert len(days) == 30 and all(len(d) == 1 for d in days.values())


def test_the_size_cap_splits_a_day(proxy, tmp_path):
    written = write_hours(tmp_path, 4, per_hour=10)
    sizes = [len(csv_body(read_rows(p), ["datetime", "V", "mA", "W"], "x"))
             for p in sorted(tmp_path.glob("*.json.*.gz"))]
    uploader = uploader_for(proxy, tmp_path)
    uploader.batch_max_bytes = max(sizes)  # no two hours fit in one job
    drain(uploader)
    assert proxy.loads == 4 and table_totals(proxy.upstream)[0] == len(written)


def write_ahead(uploader: Uploader, hours) -> tuple:
    """Write a batch ahead into the ledger exactly as the uploader does before submitting it."""
    columns = [f.name for f in uploader.target.table().schema]
    batch = uploader._read_batch(hours, columns, {})
    job_id = job_id_for(uploader.target.table_ref, batch.hours, batch.body)
    assert uploader.ledger.begin(job_id, uploader._ahead_record(batch)) == []
    return job_id, batch


def test_a_crash_between_submit_and_credit_credits_exactly_that_batch(proxy, tmp_path, caplog):
    """The state a SIGKILL after the job, before the ledger's credit, leaves behind."""
    caplog.set_level(logging.INFO)
    written = write_hours(tmp_path, 3, per_hour=10)
    crashed = uploader_for(proxy, tmp_path)
    job_id, batch = write_ahead(crashed, crashed.backlog()[:2])
    crashed.target.load(batch.body, job_id)
    assert table_totals(proxy.upstream)[0] == 20 and proxy.loads == 1
    assert ledger_of(tmp_path)["uploaded"] == {} and list(ledger_of(tmp_path)["pending"]) == [job_id]
    restarted = uploader_for(proxy, tmp_path)
    drain(restarted)
    assert "from an earlier run is in BigQuery: crediting its 2 hour(s)" in caplog.text
    assert proxy.loads == 2  # the batch credited, not loaded again; hour 2 in a job of its own
    assert table_totals(proxy.upstream)[0] == len(written)
    ledger = ledger_of(tmp_path)
    assert ledger["pending"] == {}
    assert {k: e["job_id"] == job_id for k, e in ledger["uploaded"].items()} == {
        "wattchecker-data.2026-07-01_00": True, "wattchecker-data.2026-07-01_01": True,
        "wattchecker-data.2026-07-01_02": False}


def test_a_batch_written_ahead_but_never_submitted_is_submitted_under_its_id(proxy, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    written = write_hours(tmp_path, 3, per_hour=10)
    crashed = uploader_for(proxy, tmp_path)
    job_id, _ = write_ahead(crashed, crashed.backlog())
    drain(uploader_for(proxy, tmp_path))
    assert "never reached BigQuery: sending it now" in caplog.text
    assert proxy.loads == 1 and table_totals(proxy.upstream)[0] == len(written)
    ledger = ledger_of(tmp_path)
    assert ledger["pending"] == {} and {e["job_id"] for e in ledger["uploaded"].values()} == {job_id}


def test_a_batch_whose_job_failed_goes_back_to_the_queue_and_loads_once_under_a_new_id(proxy, tmp_path, caplog):
    written = write_hours(tmp_path, 3, per_hour=10)
    crashed = uploader_for(proxy, tmp_path)
    job_id, _ = write_ahead(crashed, crashed.backlog())
    job = crashed.target.submit(b"2026-07-01 00:00:00,not a number,1,1\n", job_id)  # its job fails
    with pytest.raises(Exception):
        crashed.target.outcome(job)
    restarted = uploader_for(proxy, tmp_path)
    drain(restarted)
    assert "loaded nothing" in caplog.text and "its 3 hour(s) are queued again" in caplog.text
    assert table_totals(proxy.upstream)[0] == len(written)  # none lost, none twice
    ledger = ledger_of(tmp_path)
    assert ledger["pending"] == {} and len(ledger["uploaded"]) == 3
    assert {e["job_id"] for e in ledger["uploaded"].values()} == {job_id + "_retry1"}  # the failed id is used up
    assert (proxy.load_requests, proxy.loads) == (3, 2)  # the failed job, a 409 on its id, the retry


def test_a_rejected_batch_goes_back_whole_then_its_hours_load_alone_and_only_the_bad_one_fails(proxy, tmp_path, caplog):
    written = write_hours(tmp_path, 3, per_hour=10)
    bad = tmp_path / "wattchecker-data.json.2026-07-01_01.gz"
    with gzip.open(bad, "rt") as f:
        lines = f.read().splitlines(keepends=True)
    stamp = lines[3][14:33]
    lines[3] = lines[3].replace(stamp, stamp[:17] + "99", 1)  # a row BigQuery refuses: second 99
    with gzip.open(bad, "wt") as f:
        f.write("".join(lines))
    uploader = uploader_for(proxy, tmp_path, clock=FakeClock(T0))
    uploader.queue(uploader.backlog())
    assert uploader.step() is True  # the batch failed, nothing of it is lost: on with the next step
    assert table_totals(proxy.upstream)[0] == 0 and uploader.pending == 3
    assert ledger_of(tmp_path) == {"version": 2, "uploaded": {}, "pending": {}}
    assert not (tmp_path / "failed").exists()
    assert "loading its hours one by one" in caplog.text
    while uploader.step():
        pass
    assert table_totals(proxy.upstream)[0] == len(written) - 10  # hours 0 and 2, once each
    assert sorted(ledger_of(tmp_path)["uploaded"]) == ["wattchecker-data.2026-07-01_00", "wattchecker-data.2026-07-01_02"]
    assert sorted(p.name for p in (tmp_path / "failed").iterdir()) == [
        "wattchecker-data.2026-07-01_01.reason", "wattchecker-data.csv.2026-07-01_01.gz",
        "wattchecker-data.json.2026-07-01_01.gz"]
    assert proxy.loads == 4  # the batch, then each hour alone


def test_an_hour_in_the_ledger_is_never_sent_again(proxy, tmp_path):
    """Without the ledger's check, a 409 would hide the second load: count the requests."""
    written = write_hours(tmp_path, 2, per_hour=10)
    drain(uploader_for(proxy, tmp_path))
    assert proxy.load_requests == 1
    again = uploader_for(proxy, tmp_path)  # compacts the journal at start-up
    before = [(tmp_path / name).read_bytes() for name in ("uploaded.json", "uploaded.json.journal")]
    outcomes, rows = again.upload_group(hour_files(list(tmp_path.glob("*.gz"))))
    assert outcomes == {"wattchecker-data.2026-07-01_00": "skipped", "wattchecker-data.2026-07-01_01": "skipped"}
    assert rows == 0 and proxy.load_requests == 1  # not even a request
    assert table_totals(proxy.upstream)[0] == len(written)
    assert [(tmp_path / name).read_bytes() for name in ("uploaded.json", "uploaded.json.journal")] == before


# --- 403: a missing role --------------------------------------------------------------------


def test_a_403_is_access_denied_unless_it_is_a_rate_or_quota_limit():
    from google.api_core import exceptions as api

    jobs = classify(api.Forbidden(DENIALS["jobs"][2], errors=[{"reason": "accessDenied"}]))
    assert isinstance(jobs, AccessDenied)
    assert missing_role(jobs, "p", "d") == "BigQuery Job User (roles/bigquery.jobUser) on project p"
    table = classify(api.Forbidden("Access Denied: Table p:d.t: Permission bigquery.tables.updateData denied"))
    assert isinstance(table, AccessDenied)
    assert missing_role(table, "p", "d") == "BigQuery Data Editor (roles/bigquery.dataEditor) on dataset p.d"
    quota = classify(api.Forbidden("Quota exceeded", errors=[{"reason": "quotaExceeded"}]))
    assert isinstance(quota, TransientError) and not isinstance(quota, AccessDenied)
    assert isinstance(classify(api.BadRequest("Invalid value")), PermanentError)


@pytest.mark.parametrize("denied, role", [
    ("jobs", "BigQuery Job User (roles/bigquery.jobUser) on project test-project"),
    ("tables", "BigQuery Data Editor (roles/bigquery.dataEditor) on dataset test-project.wattchecker"),
])
def test_access_denied_keeps_hours_queued_names_the_role_once_and_heals(proxy, tmp_path, caplog, denied, role):
    caplog.set_level(logging.INFO)
    written = write_hours(tmp_path, 2, per_hour=10)
    uploader_for(proxy, tmp_path).target.table()  # the table is there: the role is what is missing
    proxy.deny = denied
    clock = FakeClock(T0)
    uploader = uploader_for(proxy, tmp_path, clock=clock, max_backoff=30)
    uploader.queue(uploader.backlog())
    assert uploader.step() is False
    assert uploader.step() is False and proxy.denied == 1  # backing off: BigQuery not asked again yet
    for _ in range(3):
        clock.advance(31)
        uploader.step()
    assert proxy.denied == 4 and uploader.stats.retries == 4
    assert uploader.pending == 2 and uploader.stats.failed == 0 and not (tmp_path / "failed").exists()
    assert len(uploader.ledger) == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"the service account likely lacks {role}" in errors[0]
    proxy.deny = None  # the role is granted
    clock.advance(31)
    while uploader.step():
        pass
    assert uploader.pending == 0 and table_totals(proxy.upstream)[0] == len(written)
    assert "BigQuery reachable again" in caplog.text


def test_hours_closed_during_a_load_all_join_the_next_batch(tmp_path):
    """Hours closing faster than BigQuery loads (a slow link, a long outage's tail) go in one job, not one each."""
    write_hours(tmp_path, 3)
    closed_files: "queue.Queue[ClosedFile]" = queue.Queue()
    for path in sorted(tmp_path.glob("*.gz")):  # as the writer announced them during a load
        fmt, stamp = path.name.split(".")[1], path.name.split(".")[2]
        closed_files.put(ClosedFile("wattchecker", fmt, dt.datetime.strptime(stamp, "%Y-%m-%d_%H"), path))
    uploader = Uploader(tmp_path, None, FakeClock(T0))
    uploader.take_announcements(closed_files, timeout=0)
    assert closed_files.empty() and uploader.pending == 3  # one day's hours: one batch (see the backlog tests)


# --- retention ------------------------------------------------------------------------------


def test_retention_deletes_old_hours_only_once_uploaded(emulator, tmp_path):
    """Retention reads the uploader's ledger through a ledger of its own, re-read each pass."""
    emulator.start()
    write_hours(tmp_path, 3)
    clock = FakeClock(T0 + dt.timedelta(days=10, hours=2, minutes=30))  # hours 0 and 1 ended over 10 days ago
    uploader = uploader_for(emulator, tmp_path, clock=clock)
    retention = Retention(tmp_path, clock, 10, uploading=True)
    assert retention.delete_expired() == 0
    assert len(list(tmp_path.glob("*.gz"))) == 6  # nothing uploaded yet: nothing deleted
    drain(uploader)
    assert retention.delete_expired() == 2 and retention.deleted == 2
    assert sorted(p.name for p in tmp_path.glob("*.gz")) == [
        "wattchecker-data.csv.2026-07-01_02.gz", "wattchecker-data.json.2026-07-01_02.gz"]


def test_retention_keeps_a_pending_batchs_hours_until_its_job_is_resolved(tmp_path):
    write_hours(tmp_path, 2)
    hour = {"rows": 3600, "source": "wattchecker-data.json.2026-07-01_00.gz"}
    Ledger(tmp_path).begin("job-1", {"table": "p.d.t", "hours": {"wattchecker-data.2026-07-01_00": hour}})
    retention = Retention(tmp_path, FakeClock(T0 + dt.timedelta(days=31)), 30, uploading=True)
    assert retention.delete_expired() == 0 and len(list(tmp_path.glob("*.gz"))) == 4
    Ledger(tmp_path).commit("job-1", {"wattchecker-data.2026-07-01_00": {"job_id": "job-1", **hour}})
    assert retention.delete_expired() == 1
    assert sorted(p.name for p in tmp_path.glob("*.gz")) == [
        "wattchecker-data.csv.2026-07-01_01.gz", "wattchecker-data.json.2026-07-01_01.gz"]


def test_retention_without_bigquery_deletes_old_hours(tmp_path):
    write_hours(tmp_path, 2)
    retention = Retention(tmp_path, FakeClock(T0 + dt.timedelta(days=31)), 30, uploading=False)
    retention.delete_expired()
    assert list(tmp_path.glob("*.gz")) == [] and retention.deleted == 2


def test_retention_keeps_the_hours_summaries_so_the_report_still_answers(tmp_path):
    import shutil

    from wattchecker_client.report import meter_report, time_zone

    data_dir = tmp_path / "data"
    write_hours(data_dir, 3, per_hour=600)
    untouched = shutil.copytree(data_dir, tmp_path / "copy")  # the report there reads the rows
    retention = Retention(data_dir, FakeClock(T0 + dt.timedelta(days=31)), 30, uploading=False)
    retention.delete_expired()
    assert list(data_dir.glob("*.gz")) == [] and retention.deleted == 3
    tz = time_zone("UTC")
    after, before = meter_report(data_dir, "wattchecker-data", "m", tz), meter_report(untouched, "wattchecker-data", "m", tz)
    assert after.rows == before.rows == 3 * 600 and after.problems == []
    assert after.total().watt_seconds == pytest.approx(before.total().watt_seconds, rel=1e-12)


@pytest.mark.process
def test_retention_on_a_read_only_card_logs_one_line_and_deletes_once_it_is_writable(tmp_path, caplog):
    """A real read-only file system (EROFS from the kernel): nothing lost, one error line, done on the next pass."""
    import subprocess

    with tmpfs(tmp_path / "card", "4m") as data_dir:
        write_hours(data_dir, 2)
        subprocess.run(["mount", "-o", "remount,ro", str(data_dir)], check=True)
        retention = Retention(data_dir, FakeClock(T0 + dt.timedelta(days=31)), 30, uploading=False)
        stop = threading.Event()
        passes = []

        def one_pass(real=retention.delete_expired) -> int:
            passes.append(len(passes))
            if len(passes) == 2:
                subprocess.run(["mount", "-o", "remount,rw", str(data_dir)], check=True)
                stop.set()
            return real()

        retention.delete_expired = one_pass
        retention.run(stop)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].startswith("retention: cannot delete old files:"), errors
        assert "Read-only file system" in errors[0] and "trying again in an hour" in errors[0]
        assert list(data_dir.glob("*.gz")) == [] and retention.deleted == 2


def test_the_retention_thread_logs_a_failing_pass_and_tries_again_an_hour_later(tmp_path, caplog):
    write_hours(tmp_path, 1)
    clock = FakeClock(T0 + dt.timedelta(days=31))
    retention = Retention(tmp_path, clock, 30, uploading=False)
    passes = []

    def failing_pass() -> int:
        passes.append(clock.monotonic())
        if len(passes) == 1:
            raise PermissionError(13, "Permission denied", str(tmp_path))
        stop.set()
        return 0

    retention.delete_expired = failing_pass
    stop = threading.Event()
    retention.run(stop)
    assert passes[1] - passes[0] == 3600
    assert "retention: cannot delete old files: [Errno 13] Permission denied" in caplog.text


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


@pytest.mark.process
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
    assert len(read_ledger(tmp_path)["uploaded"]) == 2
