"""The http: outputs with real parts: a running service, a simulated meter process, a real
Prometheus server, a real headless Chromium, real sockets on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, Optional

import pytest

from tests.browser import end_process
from tests.conftest import ROOT, cli, free_port, line_of, run_cli, wait_for, write_config
from wattchecker_client.clock import Clock, FakeClock, time_zone, utc_epoch
from wattchecker_client.config import parse_config
from wattchecker_client.daemon import Daemon
from wattchecker_client.dashboard import EnergyView, history_seconds
from wattchecker_client.live import LiveState
from wattchecker_client.report import Integrator, MeterReport, meter_report
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.writer import Writer

prometheus_client = pytest.importorskip("prometheus_client", reason="pip install 'wattchecker-client[http]'")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

PROMETHEUS = "/usr/bin/prometheus"
SEED_HOURS = int(os.environ.get("WATTCHECKER_SEED_HOURS", "12"))  # 48 for the README's picture
METER = "wattchecker"
GAUGES = ["power_watts", "voltage_volts", "current_amperes", "meter_connected", "last_reading_timestamp_seconds",
          "buffered_rows", "upload_queued_files", "run_seconds", "cost_today"]
COUNTERS = ["energy_joules", "readings", "crc_errors", "rejected_readings", "reconnects", "gaps", "missing_seconds",
            "rows_written", "write_errors", "uploaded_files", "upload_failed_files", "runs"]


# --- helpers ------------------------------------------------------------------------------


def http_config(tmp_path: Path, address: str, port: int, bigquery: bool = False, **general) -> Path:
    path = write_config(tmp_path / "config.yaml", tmp_path / "data", address, **general)
    extra = f"http:\n  listen: 127.0.0.1:{port}\n"
    if bigquery:  # an endpoint nobody listens on: the uploader exists, and no hour closes in a test
        extra += (f"bigquery:\n  dataset_id: d\n  table_id: t\n  project_id: p\n"
                  f"  api_endpoint: http://127.0.0.1:{free_port()}\n")
    path.write_text(path.read_text() + extra)
    return path


def get(url: str, method: str = "GET"):
    """(status, headers, body) of one request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def scrape(port: int) -> Dict[str, object]:
    status, _, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families: Dict[str, object], name: str, **labels) -> Optional[float]:
    family = families.get(name)
    for s in family.samples if family else []:
        if s.name in (name, name + "_total") and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def status_is(url: str, status: int):
    """A poll for wait_for: the response once it has ``status`` (connection errors: not yet)."""
    def check():
        try:
            response = get(url)
        except OSError:
            return None
        return response if response[0] == status else None
    return check


def serving(port: int):
    def up() -> bool:
        try:
            return get(f"http://127.0.0.1:{port}/metrics")[0] == 200
        except OSError:
            return False
    return up


def seed_files(data_dir: Path, hours: int) -> dt.datetime:
    """The simulated meter's last ``hours``, written by the real Writer as the service would have."""
    end = Clock().now().replace(microsecond=0) - dt.timedelta(seconds=30)
    clock = FakeClock((end - dt.timedelta(hours=hours)).replace(minute=0, second=0))
    writer = Writer(data_dir, {METER: "wattchecker-data"}, ["csv", "json"], clock, buffer_seconds=3600)
    writer.recover()
    while clock.now() < end:
        writer.add(METER, air_conditioner(clock.now(), 1))
        clock.advance(1)
        if clock.now().second == 0:
            writer.tick()
    writer.flush()
    return end


def expected_at(stamp: float):
    """What the simulated meter measured at that second (its load is a pure function of time)."""
    return air_conditioner(dt.datetime(1970, 1, 1) + dt.timedelta(seconds=stamp), 1)


# --- /metrics, parsed ------------------------------------------------------------------------


def test_metrics_follow_the_meter_and_its_link(tmp_path, simulator, daemons):
    sim = simulator()
    sim_port = int(sim.addresses[0].rsplit(":", 1)[1])
    port = free_port()
    daemon = daemons(http_config(tmp_path, sim.addresses[0], port, bigquery=True), tmp_path)
    wait_for(serving(port), 30, what="the http server")
    families = wait_for(lambda: (lambda f: f if sample(f, "wattchecker_power_watts", meter=METER) else None)(
        scrape(port)), 30, what="a power sample")

    for name in GAUGES:
        assert families["wattchecker_" + name].type == "gauge", name
    for name in COUNTERS:
        assert families["wattchecker_" + name].type == "counter", name
    stamp = sample(families, "wattchecker_last_reading_timestamp_seconds", meter=METER)
    measured = expected_at(stamp)
    assert sample(families, "wattchecker_power_watts", meter=METER) == measured.watts
    assert sample(families, "wattchecker_voltage_volts", meter=METER) == measured.volts
    assert sample(families, "wattchecker_current_amperes", meter=METER) == measured.milliamps / 1000
    assert sample(families, "wattchecker_meter_connected", meter=METER) == 1
    assert sample(families, "wattchecker_readings", meter=METER) >= 1
    for fmt in ("csv", "json"):
        assert sample(families, "wattchecker_rows_written", meter=METER, format=fmt) is not None
    assert sample(families, "wattchecker_upload_failed_files") == 0

    sim.stop()  # the meter goes away
    quiet = wait_for(lambda: (lambda f: f if sample(f, "wattchecker_meter_connected", meter=METER) == 0 else None)(
        scrape(port)), 30, what="connected 0 after the link dropped")
    for name in ("power_watts", "voltage_volts", "current_amperes"):
        assert sample(quiet, "wattchecker_" + name, meter=METER) is None, f"{name} still has a sample"
    assert sample(quiet, "wattchecker_last_reading_timestamp_seconds", meter=METER) >= stamp

    # Back, but every reading refused: the link is up and polled, yet nothing is new for over 10 s.
    refusing = simulator("--tcp", f"127.0.0.1:{sim_port}", "--bad-status-rate", "1")
    rejected = sample(quiet, "wattchecker_rejected_readings", meter=METER)

    def silent_but_linked():
        f = scrape(port)
        polled = sample(f, "wattchecker_rejected_readings", meter=METER) > rejected + 12
        return f if polled and sample(f, "wattchecker_meter_connected", meter=METER) == 0 else None

    silent = wait_for(silent_but_linked, 60, what="a linked meter with no new reading to lose its samples")
    assert sample(silent, "wattchecker_reconnects", meter=METER) >= 1  # the link is up again
    for name in ("power_watts", "voltage_volts", "current_amperes"):
        assert sample(silent, "wattchecker_" + name, meter=METER) is None, f"{name} has a stale sample"
    refusing.stop()

    simulator("--tcp", f"127.0.0.1:{sim_port}")  # back on the same address, measuring again
    back = wait_for(lambda: (lambda f: f if sample(f, "wattchecker_power_watts", meter=METER) else None)(
        scrape(port)), 60, what="power after the meter came back")
    assert sample(back, "wattchecker_meter_connected", meter=METER) == 1
    assert sample(back, "wattchecker_reconnects", meter=METER) >= 1
    assert expected_at(sample(back, "wattchecker_last_reading_timestamp_seconds", meter=METER)).watts == sample(
        back, "wattchecker_power_watts", meter=METER)
    assert daemon.stop() == 0


def test_read_only_and_nothing_outside_the_page(tmp_path, simulator, daemons):
    sim = simulator()
    port = free_port()
    daemons(http_config(tmp_path, sim.addresses[0], port), tmp_path)
    wait_for(serving(port), 30, what="the http server")
    base = f"http://127.0.0.1:{port}"
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = get(base + "/metrics", method)
        assert (status, headers["Allow"]) == (405, "GET, HEAD")
    for path in ("/static/../config.py", "/../config.yaml", "/static/%2e%2e/web.py", "/data/wattchecker-data.csv"):
        assert get(base + path)[0] == 404, path
    status, headers, body = get(base + "/", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Security-Policy"].startswith("default-src 'self'")
    status, _, body = get(base + "/static/uPlot.LICENSE.txt")
    assert status == 200 and b"MIT License" in body
    status, headers, body = get(base + "/favicon.ico")  # browsers ask whatever the page links
    assert (status, headers["Content-Type"]) == (200, "image/svg+xml")
    assert body == (ROOT / "wattchecker_client/static/icon.svg").read_bytes()


# --- Prometheus itself ------------------------------------------------------------------------


class Prometheus:
    """A real Prometheus server scraping one target every second, its data in a tmp dir."""

    def __init__(self, tmp_path: Path, target_port: int, token_file: Optional[str] = None) -> None:
        if not os.access(PROMETHEUS, os.X_OK):
            pytest.skip("needs a Prometheus server: apt-get install prometheus")
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: wattchecker\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            + (f"    authorization:\n      credentials_file: {token_file}\n" if token_file else "")
        )
        self.log = tmp_path / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
                stdout=log, stderr=log,
            )

    def query(self, promql: str, at: Optional[float] = None) -> list:
        params = {"query": promql, **({"time": repr(at)} if at is not None else {})}
        url = f"http://127.0.0.1:{self.port}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            status, _, body = get(url)
        except OSError:
            return []
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        if status != 200:
            return []
        return json.loads(body)["data"]["result"]

    def value(self, promql: str, at: Optional[float] = None) -> Optional[float]:
        result = self.query(promql, at)
        return float(result[0]["value"][1]) if result else None

    def __enter__(self) -> "Prometheus":
        return self

    def __exit__(self, *exc) -> None:
        end_process(self.proc, 20)


def test_prometheus_scrapes_power_and_energy_agrees_with_the_report(tmp_path, simulator, daemons):
    sim_port, port = free_port(), free_port()
    daemon = daemons(http_config(tmp_path, f"tcp://127.0.0.1:{sim_port}", port), tmp_path)
    with Prometheus(tmp_path, port) as prom:
        energy_agrees_with_the_report(tmp_path, prom, sim_port, simulator)
    assert daemon.stop() == 0


def energy_agrees_with_the_report(tmp_path: Path, prom: Prometheus, sim_port: int, simulator) -> None:
    """Power as measured, and the counter's increase over the run equal to the report's kWh."""
    energy = 'wattchecker_energy_joules_total{meter="%s"}' % METER
    # The span starts before the meter's first row: Prometheus holds the counter at 0 first.
    wait_for(lambda: prom.query(energy), 60, what="Prometheus to scrape the energy counter")
    sim = simulator("--tcp", f"127.0.0.1:{sim_port}")

    # Power and the meter's stamp from the same scrape: the power the simulator measured then.
    found = wait_for(lambda: prom.query('wattchecker_power_watts{meter="%s"}' % METER), 60, what="a power sample")
    at = found[0]["value"][0]
    stamp = prom.value('wattchecker_last_reading_timestamp_seconds{meter="%s"}' % METER, at)
    assert float(found[0]["value"][1]) == expected_at(stamp).watts

    time.sleep(5)
    sim.stop()  # no new rows: once they are on disk and checkpointed, the counter holds them all
    data_dir = tmp_path / "data"
    tz = time_zone("Asia/Tokyo")

    def settled():
        value = prom.value(energy)
        report = meter_report(data_dir, "wattchecker-data", METER, tz).total().watt_seconds
        return value if value and abs(value - report) < 1e-6 * report else None

    wait_for(settled, 90, interval=1, what="the energy counter to reach the files' integral")
    samples = prom.query(energy + "[10m]")[0]["values"]
    (start_at, first), (end_at, last) = samples[0], samples[-1]
    assert float(first) == 0.0
    # Two instant queries at scrape times, not increase(): increase() extrapolates to the
    # ends of its window, right for rates and wrong for an exact comparison.
    joules = prom.value(energy, end_at) - prom.value(energy, start_at)
    report = meter_report(data_dir, "wattchecker-data", METER, tz)
    assert report.rows >= 5
    assert joules == float(last)
    assert joules == pytest.approx(report.total().watt_seconds, rel=1e-9)


# --- /healthz -----------------------------------------------------------------------------------


def test_healthz_is_503_while_the_writer_is_stalled(tmp_path):
    port = free_port()
    config = parse_config(
        f"general:\n  data_dir: {tmp_path / 'data'}\n  data_buffer_size: 1\n  watchdog_stall: 2\n"
        "  data_format: csv\n  log_file: null\n"
        f"device:\n  address: 'sim://'\nhttp:\n  listen: 127.0.0.1:{port}\n"
    )
    daemon = Daemon(config)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    current = tmp_path / "data" / "wattchecker-data.csv"
    try:
        healthy = wait_for(status_is(f"http://127.0.0.1:{port}/healthz", 200), 30, what="healthy")
        assert json.loads(healthy[2])["status"] == "ok"
        assert healthy[2].count(b"\n") == 1
        wait_for(current.exists, 60, what="the first flush")
        # A named pipe where the writer appends: its next flush blocks in open(), like a hung disk.
        current.unlink()
        os.mkfifo(current)
        sick = wait_for(status_is(f"http://127.0.0.1:{port}/healthz", 503), 30, what="503 from a stalled writer")
        body = json.loads(sick[2])
        assert body["status"] == "unhealthy" and "writer" in body["reason"]
    finally:
        daemon.stop.set()
        if current.is_fifo():
            # A reader lets the blocked open() return; with the pipe gone from the folder, the
            # writer's next open at stop makes a plain file instead of blocking again.
            fd = os.open(current, os.O_RDONLY | os.O_NONBLOCK)
            current.unlink()
            threading.Thread(target=drain, args=(fd, runner), daemon=True).start()
        runner.join(60)
    assert not runner.is_alive()
    assert current.read_text().count("\n") >= 1  # the rows kept in memory, written at stop


def drain(fd: int, runner: threading.Thread) -> None:
    """Read a pipe until ``runner`` ends, so a writer into it never blocks; then close it."""
    try:
        while runner.is_alive():
            try:
                if not os.read(fd, 65536):
                    runner.join(0.05)  # no writer yet
            except BlockingIOError:
                runner.join(0.05)  # a writer, nothing written yet
    finally:
        os.close(fd)


# --- start-up and check-config -----------------------------------------------------------------


def test_ipv6_listen_serves_on_the_v6_loopback(tmp_path):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    config = parse_config(f"general:\n  data_dir: {tmp_path / 'data'}\n  log_file: null\n"
                          f"device:\n  address: 'sim://'\nhttp:\n  listen: '[::1]:{port}'\n")
    daemon = Daemon(config)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        status, _, body = wait_for(status_is(f"http://[::1]:{port}/metrics", 200), 30, what="/metrics over IPv6")
        assert re.search(rb'wattchecker_readings_total{meter="wattchecker",meter_id="[^"]+"}', body)
    finally:
        daemon.stop.set()
        runner.join(30)
    assert not runner.is_alive()
    with pytest.raises(OSError):  # the port is given back at shutdown: nothing listens there now
        socket.create_connection(("::1", port), timeout=2).close()



@pytest.mark.process
def test_bad_listen_fails_check_config_with_one_line(tmp_path):
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", "sim://")
    config.write_text(config.read_text() + "http:\n  listen: 127.0.0.1:99999\n")
    done = run_cli("check-config", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "http.listen: port 99999" in done.stderr


@pytest.mark.process
def test_without_the_library_check_config_names_the_extra(tmp_path):
    """An installation where prometheus_client cannot be imported (here: first on the path, broken)."""
    broken = tmp_path / "site" / "prometheus_client"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('No module named prometheus_client')\n")
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", "sim://")
    config.write_text(config.read_text() + "http:\n")
    done = subprocess.run(cli("check-config", "--config", str(config)), capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"wattchecker-client: error: {config}:{line_of(config, 'http:')}: http: needs the prometheus_client library: "
        "pip install 'wattchecker-client[http]'"]


@pytest.mark.process
def test_a_port_in_use_stops_start_up_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "config.yaml", tmp_path / "data", "sim://", log_file=None)
        config.write_text(config.read_text() + f"http:\n  listen: 127.0.0.1:{port}\n")
        done = run_cli("run", "--config", str(config))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and f"port {port} is already in use" in lines[0], done.stderr


# --- the page's numbers: files for the settled past, memory for the rest ------------------------------


def test_todays_kwh_and_bars_join_files_and_memory_without_double_counting(tmp_path):
    """Four hours of a meter through a real Writer and LiveState; the page's totals must equal the
    report's integral of every row received so far, at any moment, while the files are read once an hour."""
    clock = FakeClock(dt.datetime(2026, 11, 29, 4, 30, 0))  # 13:30 in Tokyo
    data_dir = tmp_path / "data"
    config = parse_config(f"general:\n  data_dir: {data_dir}\n  data_buffer_size: 250\n"
                          "device:\n  address: 'sim://'\nhttp:\n")
    writer = Writer(data_dir, {METER: "wattchecker-data"}, ["csv"], clock, buffer_seconds=250)
    writer.recover()
    live = LiveState(clock, data_dir, {METER: "wattchecker-data"}, history_seconds=history_seconds(config))
    view = EnergyView(config, live, clock)
    tz = time_zone("Asia/Tokyo")
    rows = []
    for second in range(4 * 3600):
        if 2000 <= second < 2100:  # a gap: the meter was away for 100 s
            clock.advance(1)
            continue
        m = air_conditioner(clock.now(), 3)
        writer.add(METER, m)
        live.reading(METER, m)
        rows.append((utc_epoch(m.time), float(f"{m.watts:.2f}")))
        clock.advance(1)
        writer.tick()
        if second % 900 == 899 or second % 3600 == 1860:  # also one minute into each hour
            shown = view.summary()[METER]
            expected = integral(rows, tz)
            today = (clock.now() + dt.timedelta(hours=9)).date()
            assert shown["kwh"] == pytest.approx(expected.days[today].kwh, abs=2e-6)
            bars = dict(zip(*shown["bars"]))
            for hour, wh in expected.hourly_wh.items():
                key = int((hour - dt.datetime(1970, 1, 1)).total_seconds())
                assert bars[key] == pytest.approx(wh / 1000, abs=2e-6), hour
            clock.advance(5)  # past the summary's few seconds of sharing
            writer.tick()
    assert view.file_reads == 5  # once at the first view, then once per hour that reached the disk
    assert view.hours_read == 4  # each closed hour's rows once; then its summary, not two days of rows an hour


def integral(rows, tz) -> MeterReport:
    """The report's rule over rows held in a list."""
    report = MeterReport(METER)
    integrator = Integrator(report, tz, -(2**62), 2**62)
    for hour_start in sorted({t - t % 3600 for t, _ in rows}):
        integrator.add_hour(hour_start, [(t - hour_start, w) for t, w in rows if hour_start <= t < hour_start + 3600])
    integrator.finish()
    return report


# --- the page in a real browser -----------------------------------------------------------------------


@pytest.mark.parametrize("width,height,mobile", [(390, 844, True), (1280, 800, False)], ids=["phone", "desktop"])
def test_the_page_moves_with_the_meter_in_a_real_browser(tmp_path, simulator, daemons, width, height, mobile):
    from tests.browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("needs a headless browser: apt-get install chromium")
    seeded_until = seed_files(tmp_path / "data", SEED_HOURS)
    sim = simulator()
    port = free_port()
    daemons(http_config(tmp_path, sim.addresses[0], port), tmp_path)
    wait_for(serving(port), 30, what="the http server")
    browser = Browser(tmp_path / "chromium", width, height, mobile)
    try:
        browser.open(f"http://127.0.0.1:{port}/")
        power = "document.querySelector('.meter .power')?.textContent || ''"
        points = f"wattcheckerCharts['{METER}'].line.data[0].length"
        first = wait_for(lambda: (lambda p: p if p and p[0].isdigit() else None)(browser.evaluate(power)), 30,
                         what="a power value on the page")
        wait_for(lambda: browser.evaluate(power) not in (first, "–W"), 30, what="the power value to change")
        newest = f"(d => d[d.length - 1])(wattcheckerCharts['{METER}'].line.data[0])"
        before = browser.evaluate(newest)
        wait_for(lambda: browser.evaluate(newest) > before, 30, what="the chart to gain a newer point")
        # The hour before the service started comes from the files, the rest from memory.
        assert browser.evaluate(points) >= 3500
        assert browser.evaluate("document.querySelector('.meter .state').textContent").startswith("connected")
        assert browser.evaluate("document.querySelector('.meter dd.v').textContent").endswith(" V")
        assert browser.evaluate("document.querySelector('.meter .u-over') !== null")
        # The bars come from the files: each whole hour before the seeding ended is the report's.
        xs, kwh = browser.evaluate(f"wattcheckerCharts['{METER}'].bars.data")
        assert len(xs) == 48
        report = meter_report(tmp_path / "data", "wattchecker-data", METER, time_zone("Asia/Tokyo"))
        whole = {int((h - dt.datetime(1970, 1, 1)).total_seconds()): wh for h, wh in report.hourly_wh.items()
                 if h + dt.timedelta(hours=1) <= seeded_until + dt.timedelta(hours=9)}  # Tokyo: UTC+9
        shown = dict(zip(xs, kwh))
        assert len([x for x in whole if x in shown]) >= min(SEED_HOURS, 47) - 2
        for x, wh in whole.items():
            if x in shown:
                assert shown[x] == pytest.approx(wh / 1000, abs=1e-6)
        assert browser.errors() == []
        shot = browser.screenshot(tmp_path / f"page-{width}x{height}.png")
        print(f"screenshot: {shot}")
        keep = os.environ.get("WATTCHECKER_SCREENSHOTS")
        if keep:
            shutil.copy(shot, Path(keep) / shot.name)
    finally:
        browser.close()


# --- the uploader's figures, after real loads ------------------------------------------------------


def test_upload_metrics_after_loads_into_the_bigquery_emulator(tmp_path, emulator):
    from prometheus_client import generate_latest

    from tests.test_uploader import drain, uploader_for, write_hours
    from wattchecker_client.metrics import LiveCollector, registry_for

    emulator.start()
    data_dir = tmp_path / "data"
    write_hours(data_dir, 3)
    clock = FakeClock(dt.datetime(2026, 7, 1, 5, 0, 0))
    uploader = uploader_for(emulator, data_dir, clock)
    writer = Writer(data_dir, {METER: "wattchecker-data"}, ["csv"], clock)
    live = LiveState(clock, data_dir, {METER: "wattchecker-data"})
    registry = registry_for(LiveCollector(live, lambda: {}, writer, uploader, clock))
    before = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert sample(before, "wattchecker_uploaded_files") == 0
    assert "wattchecker_last_upload_timestamp_seconds" not in before  # no upload yet: no sample, not 0
    drain(uploader)
    after = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert sample(after, "wattchecker_uploaded_files") == 3
    assert sample(after, "wattchecker_upload_failed_files") == 0
    assert sample(after, "wattchecker_upload_queued_files") == 0
    assert after["wattchecker_last_upload_timestamp_seconds"].type == "gauge"
    assert sample(after, "wattchecker_last_upload_timestamp_seconds") == utc_epoch(clock.now())


def test_energy_is_absent_from_metrics_until_the_files_are_counted(tmp_path):
    """No 0 while a first count runs (Prometheus would then put the whole history into one hour)."""
    from prometheus_client import generate_latest

    from wattchecker_client.metrics import LiveCollector, registry_for

    clock = FakeClock(dt.datetime(2026, 7, 1, 5, 0, 0))
    writer = Writer(tmp_path, {METER: "wattchecker-data"}, ["csv"], clock)
    writer.recover()
    for s in range(0, 600, 2):
        writer.add(METER, air_conditioner(dt.datetime(2026, 7, 1, 4, 50, 0) + dt.timedelta(seconds=s), 3))
    writer.flush()
    live = LiveState(clock, tmp_path, {METER: "wattchecker-data"})
    gate = threading.Lock()
    gate.acquire()  # the count holds here: the scrape below is made while it runs
    live._finish_restore, finish = (lambda *args: (gate.acquire(), finish(*args))), live._finish_restore
    on_disk = Writer(tmp_path, {METER: "wattchecker-data"}, ["csv"], clock)  # as at start-up
    on_disk.recover()
    live.restore({METER: on_disk.last_time(METER)}, background=True)
    registry = registry_for(LiveCollector(live, lambda: {}, writer, None, clock))

    def energy_samples():
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
        return [s.value for s in families["wattchecker_energy_joules"].samples if s.name.endswith("_total")]

    assert energy_samples() == []
    gate.release()
    live.restorer.join(30)
    report = meter_report(tmp_path, "wattchecker-data", METER, time_zone("UTC")).total().watt_seconds
    assert report > 0
    assert energy_samples() == [pytest.approx(report, rel=1e-12)]
