"""A 30-day backlog (720 hourly files of 3,600 rows) uploaded to the BigQuery emulator and to InfluxDB.

Run: .venv/bin/python benchmarks/upload.py [--days 30] [--ledger-only]

Makes the files with the real writer, starts the crucible emulator on a free
loopback port, and uploads the backlog with the real uploader (load jobs over
HTTP through google-cloud-bigquery, a UTC day of one meter per job). Prints the
load jobs the backlog took (BigQuery counts them against a daily per-table
quota of 1,500 and spends seconds on each), then runs the daemon with BigQuery
configured for a few seconds and reads its peak RSS. Last, the upload ledger's
bytes written per uploaded hour beside 1 and 5 years of it (``--ledger-only``:
just that). Then the same backlog to a real influxd (Debian's InfluxDB 1.x, on
loopback ports) through the InfluxDB sink: points per second and write
requests, and for both sinks the client's CPU seconds per uploaded day (this
process's own CPU: reading the files, building the body, HTTP; not the
server's). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout, and tests/

from wattchecker_client.clock import Clock, FakeClock  # noqa: E402
from wattchecker_client.config import parse_config  # noqa: E402
from wattchecker_client.simulator import air_conditioner  # noqa: E402
from wattchecker_client.upload.bigquery import BigQueryTarget  # noqa: E402
from wattchecker_client.upload.hours import csv_body, readable_rows  # noqa: E402
from wattchecker_client.upload.influx_uploader import InfluxUploader  # noqa: E402
from wattchecker_client.upload.influxdb import InfluxTarget  # noqa: E402
from wattchecker_client.upload.ledger import Ledger  # noqa: E402
from wattchecker_client.upload.uploader import Uploader  # noqa: E402
from wattchecker_client.writer import Writer  # noqa: E402

START = dt.datetime(2026, 6, 1)
PROJECT = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_backlog(data_dir: Path, hours: int) -> int:
    writer = Writer(data_dir, {"wattchecker": "wattchecker-data"}, ["json"], FakeClock(START))
    writer.recover()
    for h in range(hours):
        for s in range(3600):
            writer.add("wattchecker", air_conditioner(START + dt.timedelta(hours=h, seconds=s)))
        writer.flush()
    for fs in writer.all_sets():
        fs.close_current()
    return hours * 3600


def config_text(data_dir: Path, url: str, address: str = "sim://") -> str:
    return (
        f"general:\n  data_dir: {json.dumps(str(data_dir))}\n  data_format: [json]\n"
        f"device:\n  address: {json.dumps(address)}\n"
        f"bigquery:\n  dataset_id: wattchecker\n  table_id: power\n  project_id: {PROJECT}\n"
        f"  api_endpoint: {url}\n  create_table: true\n"
    )


def wait_for_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the emulator did not start")


def daemon_rss_mib(workdir: Path, url: str) -> float:
    config = workdir / "daemon.yaml"
    config.write_text(config_text(workdir / "daemon-data", url))
    err = open(workdir / "daemon.err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "wattchecker_client", "run", "--config", str(config)], stderr=err)
    try:
        while "running:" not in Path(err.name).read_text():
            time.sleep(0.1)
        time.sleep(5)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def written_bytes() -> int:
    """Bytes this process has handed to write() so far (the kernel's count, /proc/self/io)."""
    return int(re.search(r"wchar: (\d+)", Path("/proc/self/io").read_text()).group(1))


def ledger_bytes_per_hour(workdir: Path, years: int, hours: int = 48) -> Tuple[float, int]:
    """(bytes written per uploaded hour, snapshot size) beside ``years`` of uploaded hours, one job per hour."""
    data_dir = workdir / f"ledger-{years}"
    data_dir.mkdir()
    entries = {f"wattchecker-data.{START + dt.timedelta(hours=h):%Y-%m-%d_%H}": {
        "job": f"wattchecker-{h // 24:08d}-0123456789abcdef", "rows": 3600,
        "source": f"wattchecker-data.json.{START + dt.timedelta(hours=h):%Y-%m-%d_%H}.gz"} for h in range(years * 8760)}
    (data_dir / "uploaded.json").write_text(json.dumps({"version": 2, "uploaded": entries, "pending": {}},
                                                       indent=1, sort_keys=True))
    ledger = Ledger(data_dir)
    before = written_bytes()
    for h in range(years * 8760, years * 8760 + hours):
        key = f"wattchecker-data.{START + dt.timedelta(hours=h):%Y-%m-%d_%H}"
        job = f"wattchecker-{h:08d}-0123456789abcdef"
        ledger.begin(job, {"hours": {key: {"rows": 3600, "source": f"{key}.gz"}}, "table": "p.d.t"})
        ledger.commit(job, {key: {"job": job, "rows": 3600, "source": f"{key}.gz"}})
    return (written_bytes() - before) / hours, (data_dir / "uploaded.json").stat().st_size


def ledger_figures(workdir: Path) -> None:
    one, snapshot_one = ledger_bytes_per_hour(workdir, 1)
    five, snapshot_five = ledger_bytes_per_hour(workdir, 5)
    print(f"ledger: {one:,.0f} bytes written per uploaded hour beside 1 year of it, {five:,.0f} beside 5 "
          f"({five / one:.2f} x), plus as much again amortized when the journal is compacted "
          f"(the whole ledger, {snapshot_one / 1e6:.1f} MB or {snapshot_five / 1e6:.1f} MB, rewritten twice "
          f"per hour before the journal)")


def influx_figures(workdir: Path, data_dir: Path, days: float) -> None:
    """The backlog to a real influxd through the InfluxDB sink: points/s, requests, CPU per day."""
    if shutil.which("influxd") is None:
        print("InfluxDB: influxd not installed (apt-get install influxdb): skipped")
        return
    from tests.influx import Influxd  # the tests' own: a real influxd on loopback ports, its folder in workdir

    server = Influxd(workdir / "influxd").start()
    try:
        url = server.url
        server.create_database("bench")
        text = (f"general:\n  data_dir: {json.dumps(str(data_dir))}\ndevice:\n  address: sim://\n"
                f"influxdb:\n  url: {url}\n  database: bench\n")
        clock = Clock()
        sink = InfluxUploader(data_dir, InfluxTarget(parse_config(text).influxdb, clock), clock,
                              devices={"": "bench"}, names={"": "wattchecker"})
        sink.queue(sink.backlog())
        cpu, begin = time.process_time(), time.perf_counter()
        while sink.step():
            pass
        elapsed, cpu = time.perf_counter() - begin, time.process_time() - cpu
        server_cpu = sum(int(v) for v in Path(f"/proc/{server.proc.pid}/stat").read_text().split()[13:15])
        server_cpu /= os.sysconf("SC_CLK_TCK")
        peak = day_peak_memory(data_dir, sink.target, clock)
    finally:
        server.stop()
    s = sink.stats
    print(f"InfluxDB: {s.points:,} points of {s.uploaded} hours in {s.requests} write requests "
          f"({s.points / max(1, s.requests):,.0f} points each) in {elapsed:.1f} s: {s.points / elapsed:,.0f} points/s; "
          f"client CPU {cpu / days:.2f} s per uploaded day (influxd's own: {server_cpu / days:.2f} s per day); "
          f"failed {s.failed}, retries {s.retries}")
    print(f"InfluxDB: peak Python memory while sending a day again (ledger deleted): {peak[0] / 1e6:.1f} MB, "
          f"the points streamed an hour at a time; a day's points held at once: {peak[1] / 1e6:.1f} MB")


def day_peak_memory(data_dir: Path, target: InfluxTarget, clock: Clock) -> Tuple[int, int]:
    """tracemalloc's peaks while one day goes up again, its ledger deleted (the points overwrite), and
    while the same day's points are held in one list instead."""
    import tracemalloc

    for path in data_dir.glob("influx-uploaded.json*"):
        path.unlink()
    sink = InfluxUploader(data_dir, target, clock, devices={"": "bench"}, names={"": "wattchecker"})
    day = sink.backlog()[:24]
    sink.queue(day)
    peaks = []
    for work in (sink.step, lambda: list(sink._points(day, {}, {}))):
        tracemalloc.start()
        work()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return peaks[0], peaks[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--ledger-only", action="store_true", help="only the ledger's bytes per hour")
    parser.add_argument("--influxdb-only", action="store_true", help="only the InfluxDB sink's figures")
    args = parser.parse_args()
    if args.ledger_only:
        with tempfile.TemporaryDirectory() as tmp:
            ledger_figures(Path(tmp))
        return
    hours = int(args.days * 24)
    if args.influxdb_only:
        influx_backlog(hours, args.days)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data_dir = workdir / "data"
        begin = time.perf_counter()
        rows = make_backlog(data_dir, hours)
        made = time.perf_counter() - begin
        port = free_port()
        crucible = Path(sys.executable).parent / "crucible"
        emulator = subprocess.Popen(
            [str(crucible), "serve", "--dialect", "bigquery", "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            url = f"http://127.0.0.1:{port}"
            config = parse_config(config_text(data_dir, url))
            uploader = Uploader(data_dir, BigQueryTarget(config.bigquery, False), Clock())
            backlog = uploader.backlog()
            begin = time.perf_counter()
            for hour_file in backlog:  # the client's own share: read the .gz, build the CSV body
                csv_body(readable_rows(hour_file)[1], ["datetime", "V", "mA", "W"], "wattchecker")
            prepare = time.perf_counter() - begin
            begin = time.perf_counter()
            uploader.queue(backlog)
            cpu = time.process_time()
            while uploader.step():
                pass
            elapsed, cpu = time.perf_counter() - begin, time.process_time() - cpu
            stats = uploader.stats
            rss = daemon_rss_mib(workdir, url)
        finally:
            emulator.send_signal(signal.SIGTERM)
            emulator.wait(30)
    print(f"backlog: {len(backlog)} hourly files, {rows} rows (made by the writer in {made:.1f} s)")
    print(f"load jobs: {stats.jobs} for {len(backlog)} hourly files over {args.days:g} day(s) "
          f"({len(backlog) / max(1, stats.jobs):.1f} hours per job; one job per hour would take {len(backlog)})")
    print(f"uploaded {stats.uploaded} files, {stats.rows} rows in {elapsed:.1f} s: "
          f"{stats.rows / elapsed:,.0f} rows/s, {elapsed / max(1, stats.uploaded):.2f} s per hourly file, "
          f"{elapsed / max(1, stats.jobs):.1f} s per load job (failed {stats.failed}, retries {stats.retries})")
    print(f"of which the client's own work (read .gz, build CSV): {prepare:.1f} s, "
          f"{rows / prepare:,.0f} rows/s; the rest is HTTP and the emulator's load")
    print(f"BigQuery: {stats.rows / elapsed:,.0f} rows/s; client CPU {cpu / args.days:.2f} s per uploaded day")
    print(f"daemon peak RSS with BigQuery configured: {rss:.1f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        ledger_figures(Path(tmp))
    influx_backlog(hours, args.days)


def influx_backlog(hours: int, days: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        make_backlog(data_dir, hours)
        influx_figures(Path(tmp), data_dir, days)


if __name__ == "__main__":
    main()
