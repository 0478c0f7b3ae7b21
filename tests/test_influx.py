"""The InfluxDB sink against a real influxd (1.x) started here, and the 2.x path against a stand-in."""

from __future__ import annotations

import datetime as dt
import http.server
import logging
import shutil
import signal
import threading
import urllib.parse
from pathlib import Path
from typing import List

import pytest

from wattchecker_client.clock import FakeClock
from wattchecker_client.config import ConfigError, parse_config
from wattchecker_client.live import LiveState
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.upload.hours import hour_files, readable_rows
from wattchecker_client.upload.influx_uploader import LEDGER_NAME, InfluxUploader, LivePoints
from wattchecker_client.upload.influxdb import InfluxTarget, retry_after
from wattchecker_client.upload.ledger import Ledger
from wattchecker_client.upload.retention import Retention
from wattchecker_client.writer import closed_files_in

from .influx import Influxd, influxd, irregular_seconds, write_seconds  # noqa: F401  (influxd: a fixture)

T0 = dt.datetime(2026, 6, 1, 0, 0, 0)  # UTC; 09:00 in Tokyo
HOURS = 26  # a whole UTC day and the next day's first hours: two days' groups


def write_rows(data_dir: Path, seconds, formats=("csv", "json")) -> int:
    """Closed hour files of rows at T0 + each second, made by the real writer; the rows written."""
    return write_seconds(data_dir, seconds, T0, formats)


@pytest.fixture(scope="module")
def day_folder(tmp_path_factory) -> Path:
    """26 hours of rows in both formats, made once and copied by each test that changes them."""
    folder = tmp_path_factory.mktemp("day")
    write_rows(folder, irregular_seconds(HOURS))
    return folder


def config_text(url: str, version: int = 1, **keys) -> str:
    keys = keys or ({"database": "wattchecker"} if version == 1 else {})
    lines = "".join(f"  {k}: {v}\n" for k, v in keys.items())
    return (f"general:\n  data_dir: data\ndevice:\n  address: sim://\n"
            f"influxdb:\n  url: {url}\n  version: {version}\n{lines}")


def make_sink(data_dir: Path, url: str, db: str, clock=None, **keys) -> InfluxUploader:
    clock = clock or FakeClock(T0 + dt.timedelta(days=2))
    config = parse_config(config_text(url, database=db, **keys)).influxdb
    return InfluxUploader(data_dir, InfluxTarget(config, clock), clock, devices={"": "m-0c-bf-01"},
                          names={"": "wattchecker"})


def drain(sink: InfluxUploader, clock: FakeClock, limit: int = 1000) -> None:
    """Run the sink's steps until its queue is empty, waiting out its backoffs on the fake clock."""
    sink.queue(sink.backlog())
    for _ in range(limit):
        if not sink.pending:
            return
        if not sink.step():
            clock.advance(sink.max_backoff)
    raise AssertionError(f"{sink.pending} hours still queued")


def file_rows(data_dir: Path) -> int:
    return sum(len(readable_rows(h)[1]) for h in hour_files(closed_files_in(data_dir)))


def test_a_day_goes_up_in_few_requests_and_every_row_counts_once(influxd, day_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(day_folder, data)
    db = influxd.create_database("once")
    clock = FakeClock(T0 + dt.timedelta(days=2))
    sink = make_sink(data, influxd.url, db, clock)
    sink.queue(sink.backlog())
    assert sink.step()  # the first UTC day: 24 hours in one batch of requests
    assert sink.stats.uploaded == 24
    assert sink.stats.requests <= 30, sink.stats.requests
    drain(sink, clock)
    rows = file_rows(data)
    assert rows == sum(1 for _ in irregular_seconds(HOURS))
    assert influxd.count(db) == rows
    first = influxd.query('SELECT "volts", "milliamps", "watts" FROM "wattchecker" ORDER BY time LIMIT 1', db)
    row = readable_rows(hour_files(closed_files_in(data))[0])[1][0]
    assert first[0]["values"][0][1:] == [float(row["V"]), float(row["mA"]), float(row["W"])]
    assert first[0]["values"][0][0] == int(T0.replace(tzinfo=dt.timezone.utc).timestamp())

    # the ledger deleted: every hour is sent again, and InfluxDB still holds each second once
    for path in data.glob(LEDGER_NAME + "*"):
        path.unlink()
    again = make_sink(data, influxd.url, db, clock)
    drain(again, clock)
    assert again.stats.uploaded == HOURS
    assert influxd.count(db) == rows
    assert influxd.query('SELECT count("watt_seconds") FROM "wattchecker"', db)[0]["values"][0][1] == rows


class KillAfter:
    """The real target, and a kill of influxd after ``n`` successful writes: mid-backlog by construction."""

    def __init__(self, target: InfluxTarget, server: Influxd, n: int) -> None:
        self.target, self.server, self.left = target, server, n
        self.config, self.where = target.config, target.where

    def write(self, body: bytes) -> None:
        self.target.write(body)
        self.left -= 1
        if self.left == 0:
            self.server.stop(signal.SIGKILL)

    def close(self) -> None:
        self.target.close()


@pytest.mark.process
def test_influxd_killed_mid_backlog_then_restarted_loses_and_doubles_nothing(day_folder, tmp_path, caplog):
    server = Influxd(tmp_path / "influxd").start()
    try:
        data = tmp_path / "data"
        shutil.copytree(day_folder, data)
        db = server.create_database("killed")
        clock = FakeClock(T0 + dt.timedelta(days=2))
        sink = make_sink(data, server.url, db, clock)
        sink.target = KillAfter(sink.target, server, 7)  # the first day takes 18 requests
        sink.queue(sink.backlog())
        with caplog.at_level(logging.WARNING):
            assert not sink.step()
            assert not sink.step()  # still down: backoff, not a second warning
            clock.advance(sink.max_backoff)
            assert not sink.step()
        assert server.proc.poll() == -signal.SIGKILL
        assert sink.stats.uploaded == 0 and sink.pending == HOURS
        waits = [r.getMessage() for r in caplog.records if "must wait" in r.getMessage()]
        assert len(waits) == 1 and "cannot be reached" in waits[0]
        server.start()
        assert 0 < server.count(db) < file_rows(data)  # the 7 requests before the kill survived it
        drain(sink, clock)
        assert server.count(db) == file_rows(data) == sum(1 for _ in irregular_seconds(HOURS))
        hours = server.query('SELECT count("watts") FROM "wattchecker" WHERE time >= \'2026-06-01T00:00:00Z\' '
                             'AND time < \'2026-06-03T00:00:00Z\' GROUP BY time(1h) fill(none)', db)[0]["values"]
        assert [n for _, n in hours] == [len(readable_rows(h)[1]) for h in hour_files(closed_files_in(data))]
    finally:
        server.stop()


def test_refused_points_go_to_failed_with_one_warning_quoting_the_server(influxd, tmp_path, caplog):
    data = tmp_path / "data"
    later = 10 * 86400  # another week: another shard, where a field of another type waits
    write_rows(data, list(range(0, 3600, 10)) + list(range(later, later + 3600, 10)))
    db = influxd.create_database("refused")
    stamp = int((T0 + dt.timedelta(seconds=later + 600)).replace(tzinfo=dt.timezone.utc).timestamp())
    influxd_write(influxd, db, f'wattchecker,device=m-0c-bf-01,name=wattchecker watts="off" {stamp}')
    clock = FakeClock(T0 + dt.timedelta(days=20))
    sink = make_sink(data, influxd.url, db, clock)
    with caplog.at_level(logging.WARNING):
        drain(sink, clock)
    key = "wattchecker-data.2026-06-11_00"
    assert sink.stats.uploaded == 1 and sink.stats.failed == 1
    assert key not in sink.ledger and "wattchecker-data.2026-06-01_00" in sink.ledger
    reason = (data / "failed" / f"{key}.influxdb.reason").read_text()
    assert reason.startswith("InfluxDB refused the points (400): partial write: field type conflict"), reason
    assert len((data / "failed" / f"{key}.influxdb.lp").read_text().splitlines()) == 360
    refused = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
    assert len(refused) == 1 and "field type conflict" in refused[0], caplog.text
    assert len(list(data.glob("*.2026-06-11_00.gz"))) == 2  # the hour's files stay, for the other sinks
    assert not sink.pending  # and the next start tries it again
    assert [h.key for h in make_sink(data, influxd.url, db, clock).backlog()] == [key]


def influxd_write(server: Influxd, db: str, line: str) -> None:
    import urllib.request

    request = urllib.request.Request(f"{server.url}/write?db={db}&precision=s", data=line.encode(), method="POST")
    urllib.request.urlopen(request, timeout=30).close()


def test_live_points_are_the_points_the_hour_upload_rewrites(influxd, tmp_path):
    data = tmp_path / "data"
    db = influxd.create_database("live")
    clock = FakeClock(T0)
    live = LiveState(clock, data, {"wattchecker": "wattchecker-data"})
    config = parse_config(config_text(influxd.url, database=db, live="true")).influxdb
    points = LivePoints(live, InfluxTarget(config, clock), clock, {"wattchecker": "m-0c-bf-01"})
    for s in range(5):
        live.reading("wattchecker", air_conditioner(T0 + dt.timedelta(seconds=s)), relay=True)
        live.reading("wattchecker", air_conditioner(T0 + dt.timedelta(seconds=s)))  # the same second again
        live.relay_latch("wattchecker", s == 4)
        points.write_once()
    points.write_once()  # nothing new: no write
    assert points.written == 5 and influxd.count(db) == 5
    write_rows(data, range(0, 3600))
    sink = make_sink(data, influxd.url, db, clock)
    drain(sink, clock)
    assert influxd.count(db) == 3600
    relay = 'SELECT "relay", "relay_latched", "watt_seconds" FROM "wattchecker" WHERE "relay" >= 0'
    assert [v[1:3] for v in influxd.query(relay, db)[0]["values"]] == [[1, 0]] * 4 + [[1, 1]]  # kept beside the rows


def test_retention_keeps_an_hour_until_every_sink_has_it(tmp_path):
    write_rows(tmp_path, range(0, 2 * 3600, 60), formats=("csv",))
    first, second = (h.key for h in hour_files(closed_files_in(tmp_path)))
    entry = {"rows": 60}
    Ledger(tmp_path).commit("job-1", {first: entry, second: entry})
    Ledger(tmp_path, name=LEDGER_NAME).commit("influx 1", {first: entry})
    clock = FakeClock(T0 + dt.timedelta(days=40))
    retention = Retention(tmp_path, clock, 30, ledgers=["uploaded.json", LEDGER_NAME])
    assert retention.delete_expired() == 1
    assert [h.key for h in hour_files(closed_files_in(tmp_path))] == [second]


# --- InfluxDB 2.x: a stand-in, as no InfluxDB 2 server is packaged here ----------------------------


class StandInV2(http.server.ThreadingHTTPServer):
    """A STAND-IN for InfluxDB 2.x's write endpoint (not a real server): it checks the request the
    InfluxDB 2 API documents (POST /api/v2/write?org=&bucket=&precision=s, ``Authorization: Token``,
    line protocol) and answers with the statuses queued in ``answers`` (then 204)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), StandInHandler)
        self.points: dict = {}
        self.requests: List[dict] = []
        self.answers: List[tuple] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class StandInHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: StandInV2 = self.server
        url = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8")
        server.requests.append({"path": url.path, "query": dict(urllib.parse.parse_qsl(url.query)),
                                "authorization": self.headers.get("Authorization"),
                                "type": self.headers.get("Content-Type"), "body": body})
        if server.answers:
            status, headers, text = server.answers.pop(0)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            payload = text.encode()
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        for line in body.splitlines():
            series, fields, stamp = line.rsplit(" ", 2)
            server.points[(series, int(stamp))] = fields
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stand_in():
    server = StandInV2()
    yield server
    server.shutdown()


def v2_sink(data: Path, server: StandInV2, tmp_path: Path, clock) -> InfluxUploader:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    text = config_text(server.url, 2, org="home", bucket="power", token_file=str(token))
    config = parse_config(text, str(tmp_path / "config.yaml")).influxdb
    return InfluxUploader(data, InfluxTarget(config, clock), clock, devices={"": "m-0c-bf-01"},
                          names={"": "wattchecker"})


def test_v2_sends_the_documented_request_to_a_stand_in(stand_in, tmp_path):
    data = tmp_path / "data"
    write_rows(data, range(0, 2 * 3600, 5))
    clock = FakeClock(T0 + dt.timedelta(days=1))
    sink = v2_sink(data, stand_in, tmp_path, clock)
    drain(sink, clock)
    request = stand_in.requests[0]
    assert request["path"] == "/api/v2/write"
    assert request["query"] == {"org": "home", "bucket": "power", "precision": "s"}
    assert request["authorization"] == "Token s3cret-token"
    assert request["type"] == "text/plain; charset=utf-8"
    row = readable_rows(hour_files(closed_files_in(data))[0])[1][0]
    stamp = int(T0.replace(tzinfo=dt.timezone.utc).timestamp())
    assert request["body"].splitlines()[0] == (
        f"wattchecker,device=m-0c-bf-01,name=wattchecker volts={float(row['V'])!r},milliamps={float(row['mA'])!r},"
        f"watts={float(row['W'])!r},watt_seconds={float(row['W']) * 5!r} {stamp}")  # 5 s steps hold 5 s: W * 5
    assert len(stand_in.points) == 2 * 720 == file_rows(data)


def test_v2_honours_retry_after_and_names_the_token_setting_on_401(stand_in, tmp_path, caplog):
    data = tmp_path / "data"
    write_rows(data, range(0, 3600, 60))
    clock = FakeClock(T0 + dt.timedelta(days=1))
    sink = v2_sink(data, stand_in, tmp_path, clock)
    sink.queue(sink.backlog())
    stand_in.answers = [(429, {"Retry-After": "30"}, '{"code":"too many requests","message":"slow down"}'),
                        (401, {}, '{"code":"unauthorized","message":"unauthorized access"}'),
                        (401, {}, '{"code":"unauthorized","message":"unauthorized access"}')]
    with caplog.at_level(logging.WARNING):
        assert not sink.step()
        clock.advance(29)
        assert not sink.step() and len(stand_in.requests) == 1  # Retry-After: 30 is not over yet
        clock.advance(1)
        assert not sink.step() and len(stand_in.requests) == 2  # then a 401
        clock.advance(sink.max_backoff)
        assert not sink.step() and len(stand_in.requests) == 3
    denied = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert denied == ["InfluxDB refused the credentials (401: unauthorized access): check influxdb.token_file "
                      "(a token allowed to write to bucket power); hours stay queued and are retried with backoff"]
    clock.advance(sink.max_backoff)
    assert not sink.step() and sink.stats.uploaded == 1 and len(stand_in.points) == 60


def test_retry_after_as_seconds_or_a_date():
    now = dt.datetime(2026, 6, 1, 12, 0, 0)
    assert retry_after("120", now) == 120
    assert retry_after("Mon, 01 Jun 2026 12:01:30 GMT", now) == 90
    assert retry_after("soon", now) is None and retry_after(None, now) is None


# --- the config ------------------------------------------------------------------------


@pytest.mark.parametrize("version, keys, error", [
    (1, {}, "influxdb.database: missing (required for InfluxDB 1.x)"),
    (2, {"org": "o", "bucket": "b"}, "influxdb.token_file: missing (required for InfluxDB 2.x)"),
    (2, {"org": "o", "bucket": "b", "token_file": "t", "database": "d"},
     "influxdb.database: only applies to InfluxDB 1.x (version: 1); this section is for version 2"),
    (3, {"database": "d"}, "influxdb.version: must be 1 (InfluxDB 1.x: /write) or 2"),
    (1, {"database": "d", "username": "u"}, "influxdb.password_file: missing: username and password_file go together"),
    (1, {"database": "d", "measurment": "x"}, "influxdb.measurment: unknown key; did you mean 'measurement'?"),
])
def test_config_errors_name_the_key(version, keys, error):
    text = config_text("http://127.0.0.1:8086", version, **keys) if keys else config_text(
        "http://127.0.0.1:8086", version, measurement="wattchecker")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "c.yaml")
    assert error in str(raised.value)


def test_config_refuses_a_url_with_a_path():
    with pytest.raises(ConfigError, match="influxdb.url: 'http://h:8086/write' is not a server's base URL"):
        parse_config(config_text("http://h:8086/write", database="d"), "c.yaml")


def test_the_hour_before_is_sent_again_with_its_step_known(influxd, tmp_path):
    """The hour's last row holds 1 s until the next hour is sent; then its step (2 s here) counts."""
    data = tmp_path / "data"
    db = influxd.create_database("steps")
    write_rows(data, [0, 3598])
    clock = FakeClock(T0 + dt.timedelta(days=1))
    sink = make_sink(data, influxd.url, db, clock)
    drain(sink, clock)
    last = 'SELECT "watt_seconds" / "watts" FROM "wattchecker" ORDER BY time DESC LIMIT 1'
    assert influxd.query(last, db)[0]["values"][0][1] == 1
    write_rows(data, [3600, 3601])  # the next hour, closed later
    drain(sink, clock)
    held = 'SELECT "watt_seconds" / "watts" FROM "wattchecker" WHERE time = \'2026-06-01T00:59:58Z\''
    assert influxd.query(held, db)[0]["values"][0][1] == 2
    assert influxd.count(db) == 4


@pytest.mark.process
def test_check_config_names_the_server_and_the_token_file(tmp_path):
    from .conftest import run_cli

    config = tmp_path / "config.yaml"
    config.write_text(config_text("https://influx.example:8086", 2, org="home", bucket="power", token_file="token"))
    missing = run_cli("check-config", "--config", str(config))
    assert missing.returncode != 0
    assert f"influxdb.token_file: cannot read {tmp_path / 'token'}: No such file or directory" in missing.stderr
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "token").chmod(0o644)
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "  InfluxDB: https://influx.example:8086 (InfluxDB 2.x), org home, bucket power with a token, " \
           "measurement wattchecker\n" in result.stdout
    assert f"warning: {tmp_path / 'token'} is readable by other users (mode 644): chmod o-rwx it" in result.stderr


@pytest.mark.process
def test_v1_wrong_password_is_one_line_naming_the_settings(tmp_path, caplog):
    server = Influxd(tmp_path / "influxd", auth=True).start()
    try:
        admin = ("admin", "right")
        server.query("CREATE USER admin WITH PASSWORD 'right' WITH ALL PRIVILEGES")  # the first user needs none
        server.query('CREATE DATABASE "auth"', user=admin)
        data = tmp_path / "data"
        write_rows(data, range(0, 3600, 60))
        (tmp_path / "password").write_text("wrong\n")
        clock = FakeClock(T0 + dt.timedelta(days=1))
        sink = make_sink(data, server.url, "auth", clock, username="admin", password_file=str(tmp_path / "password"))
        with caplog.at_level(logging.WARNING):
            sink.queue(sink.backlog())
            assert not sink.step()
            clock.advance(sink.max_backoff)
            assert not sink.step()
        assert [r.getMessage() for r in caplog.records] == [
            "InfluxDB refused the credentials (401: authorization failed): check influxdb.username and "
            "influxdb.password_file (a user with WRITE on database auth); hours stay queued and are retried with "
            "backoff"]
        (tmp_path / "password").write_text("right\n")
        sink = make_sink(data, server.url, "auth", clock, username="admin", password_file=str(tmp_path / "password"))
        drain(sink, clock)
        assert server.query('SELECT count("watts") FROM "wattchecker"', "auth", admin)[0]["values"][0][1] == 60
    finally:
        server.stop()


def test_an_hour_and_its_late_parts_go_up_with_the_reports_energy(influxd, tmp_path):
    from wattchecker_client.clock import time_zone
    from wattchecker_client.report import meter_report

    data = tmp_path / "data"
    db = influxd.create_database("parts")
    clock = FakeClock(T0 + dt.timedelta(days=1))
    sink = make_sink(data, influxd.url, db, clock)
    write_rows(data, range(0, 7200, 2))
    write_rows(data, [1, 3, 5, 3601])  # late rows of both hours, closed later: .part1 files
    assert len(hour_files(closed_files_in(data))) == 4
    drain(sink, clock)  # parts sent together
    write_rows(data, [7, 9, 3603])  # later still: .part2 files, sent alone
    drain(sink, clock)
    assert sink.stats.uploaded == 6
    assert influxd.count(db) == 3600 + 7
    joules = influxd.query('SELECT sum("watt_seconds") FROM "wattchecker"', db)[0]["values"][0][1]
    report = meter_report(data, "wattchecker-data", "wattchecker", time_zone("Asia/Tokyo"), use_summaries=False)
    assert joules == pytest.approx(report.total().watt_seconds, rel=1e-12)  # row 6 now holds 1 s, not 2


def test_the_service_announces_each_closed_hour_to_both_sinks_and_retention_waits_for_both(tmp_path):
    from wattchecker_client.daemon import Daemon
    from wattchecker_client.writer import ClosedFile

    text = config_text("http://127.0.0.1:8086", database="w").replace("  data_dir: data\n", "  data_dir: data\n"
                                                                       "  retention_days: 30\n")
    text += "bigquery:\n  dataset_id: d\n  table_id: t\n  project_id: p\n  api_endpoint: http://127.0.0.1:9\n"
    daemon = Daemon(parse_config(text, str(tmp_path / "config.yaml")), environ={})
    closed = ClosedFile("wattchecker", "csv", T0, tmp_path / "data" / "wattchecker-data.csv.2026-06-01_00.gz")
    daemon.writer.closed_files.put(closed)
    assert daemon.closed_files.get_nowait() == daemon.influx_files.get_nowait() == closed
    assert [ledger.path.name for ledger in daemon.retention.ledgers] == ["uploaded.json", LEDGER_NAME]
    assert daemon.influx_live is None and daemon.influx.target.where == "database w"


@pytest.mark.process
def test_a_connection_the_server_dropped_between_hours_costs_no_warning(tmp_path, caplog):
    server = Influxd(tmp_path / "influxd").start()
    try:
        data = tmp_path / "data"
        write_rows(data, range(0, 3600, 60))
        db = server.create_database("idle")
        clock = FakeClock(T0 + dt.timedelta(days=1))
        sink = make_sink(data, server.url, db, clock)
        drain(sink, clock)
        server.stop()  # its kept-alive connection dies with it
        server.start()
        write_rows(data, range(3600, 7200, 60))  # the next hour closes
        with caplog.at_level(logging.WARNING):
            drain(sink, clock)
        assert not caplog.records and sink.stats.retries == 0
        assert server.count(db) == 120
    finally:
        server.stop()
