"""A real InfluxDB 1.x (Debian's influxd) on loopback ports, and InfluxQL against it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from tests.conftest import free_port, wait_for
from wattchecker_client.clock import FakeClock
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.writer import Writer

CONFIG = """reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  auth-enabled = {auth}
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"""


class Influxd:
    """One influxd with its own folder; ``stop`` and ``start`` again keep its data."""

    def __init__(self, workdir: Path, auth: bool = False) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.rpc = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "influxdb.conf"
        self.config.write_text(CONFIG.format(dir=workdir, port=self.port, rpc=self.rpc,
                                                 auth="true" if auth else "false"))
        self.log = workdir / "influxd.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Influxd":
        influxd = shutil.which("influxd")
        if influxd is None:
            pytest.skip("needs InfluxDB 1.x: apt-get install influxdb")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([influxd, "-config", str(self.config)], stdout=log, stderr=log)

        def answering() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=1) as answer:
                    return answer.status == 204
            except OSError:
                return False

        wait_for(answering, timeout=60, what="influxd")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def query(self, q: str, db: Optional[str] = None, user: Optional[Tuple[str, str]] = None) -> List[dict]:
        """The statement's series (``results[0].series``), or [] if it has none; an error raises."""
        params = {"q": q, "epoch": "s", **({"db": db} if db else {})}
        request = urllib.request.Request(self.url + "/query", data=urllib.parse.urlencode(params).encode(),
                                         method="POST")
        if user:  # influxd reads credentials from the URL or this header, not from a form body
            request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
        with urllib.request.urlopen(request, timeout=60) as answer:
            result = json.loads(answer.read())["results"][0]
        assert "error" not in result, (q, result["error"])
        return result.get("series", [])

    def create_database(self, name: str) -> str:
        self.query(f'CREATE DATABASE "{name}"')
        return name

    def count(self, db: str, measurement: str = "wattchecker") -> int:
        series = self.query(f'SELECT count("watts") FROM "{measurement}"', db)
        return sum(int(s["values"][0][1]) for s in series)


def port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return False
    except OSError:
        return True


@pytest.fixture(scope="module")
def influxd(tmp_path_factory):
    """One influxd for a test module; each test uses a database of its own."""
    server = Influxd(tmp_path_factory.mktemp("influxd")).start()
    yield server
    server.stop()


def irregular_seconds(hours: int):
    """1 Hz with what a real meter does: a lost second now and then, a 3 s step, a 40 s gap."""
    for s in range(hours * 3600):
        if s % 997 == 0 and s or 5000 < s < 5040 or s in (7001, 7002):
            continue
        yield s


def write_seconds(data_dir: Path, seconds, start: dt.datetime, formats=("csv", "json")) -> int:
    """Closed hour files of the air conditioner's rows at ``start`` + each second, made by the real writer."""
    writer = Writer(data_dir, {"wattchecker": "wattchecker-data"}, formats, FakeClock(start))
    writer.recover()
    rows = 0
    for s in seconds:
        writer.add("wattchecker", air_conditioner(start + dt.timedelta(seconds=s)))
        rows += 1
    writer.flush()
    for fs in writer.all_sets():
        fs.close_current()
    return rows
