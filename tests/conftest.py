"""Shared fixtures: real sockets, real ptys, real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import pytest

from wattchecker_client.protocol import FrameDecoder
from wattchecker_client.transport import socket_link

ROOT = Path(__file__).resolve().parent.parent
Chunks = Union[bytes, Sequence[bytes]]


class ScriptedPeer:
    """The meter's end of a real socketpair, answering each request with scripted bytes.

    Each script item answers one request: bytes are written at once; a list
    of chunks is written piece by piece with a pause between, so the client
    sees split reads; None, or the end of the script, sends nothing (the
    client must time out).
    """

    def __init__(self, script: List[object]) -> None:
        self.script = list(script)
        self.requests: List[bytes] = []
        ours, theirs = socket.socketpair()
        self._ours = ours
        self._client = None
        self._sock = theirs
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = FrameDecoder()
        with self._sock:
            while True:
                try:
                    data = self._sock.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                decoder.feed(data)
                for frame in decoder:
                    self.requests.append(frame.payload)
                    if self.script:
                        self._answer(self.script.pop(0))

    def _answer(self, item: object) -> None:
        if item is None:
            return
        chunks = [item] if isinstance(item, bytes) else list(item)
        for chunk in chunks:
            self._sock.sendall(chunk)
            time.sleep(0.01)

    @property
    def client(self):
        """The host's end as a Link."""
        if self._client is None:
            self._client = socket_link(self._ours, "scripted meter", timeout=1.0)
        return self._client

    def rfcomm_factory(self, mac: str, channel: int, timeout: float) -> socket.socket:
        """Hand the host's end to open_link, in place of the RFCOMM socket call."""
        return self._ours

    def hang_up(self) -> None:
        """The meter goes away: its end of the link shuts down."""
        self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def close(self) -> None:
        self._ours.close()
        self._thread.join(timeout=5)


@pytest.fixture
def scripted():
    peers: List[ScriptedPeer] = []

    def make(script: List[object]) -> ScriptedPeer:
        peer = ScriptedPeer(script)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


def cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "wattchecker_client", *args]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


class Simulator:
    """A real `wattchecker-client simulate` process and the addresses it printed."""

    def __init__(self, args: Sequence[str], expect: int = 1) -> None:
        self.proc = subprocess.Popen(
            cli("simulate", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        self.addresses = []
        self._log = ""
        for _ in range(expect):
            line = self.proc.stdout.readline()
            if not line.startswith("listening on "):
                self.proc.kill()
                raise RuntimeError(f"simulator said {line!r}: {self.proc.stderr.read()}")
            self.addresses.append(line.split("listening on ", 1)[1].strip())

    def log(self) -> str:
        """Everything the simulator logged; only once it has stopped."""
        self.stop()
        return self._log

    def stop(self) -> int:
        """SIGTERM, then the exit status; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)  # a failure bound; it exits in well under a second
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            if not self.proc.stderr.closed:
                self._log = self.proc.stderr.read()
            self.proc.stdout.close()
            self.proc.stderr.close()


@pytest.fixture
def simulator():
    started: List[Simulator] = []

    def start(*args: str, expect: int = 1) -> Simulator:
        sim = Simulator(args, expect)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    """Poll until ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def count_between_writes(count, interval: float = 1.0) -> int:
    """``count()`` taken midway between two writes that come every ``interval`` s: a row count taken
    again a whole number of intervals later then has every write in between, and no write's jitter at
    either edge (taken just after a write, the last write of a minute may fall one side or the other)."""
    before = count()
    wait_for(lambda: count() > before, timeout=30 + 2 * interval, interval=0.02, what="the next write")
    time.sleep(interval / 2)
    return count()


class DaemonProcess:
    """A real `wattchecker-client run --config FILE` process; output goes to files."""

    def __init__(self, config: Path, workdir: Path, env: Optional[Dict[str, str]] = None, args=()) -> None:
        runs = len(list(workdir.glob("daemon-*.err")))
        self.out_path = workdir / f"daemon-{runs}.out"
        self.err_path = workdir / f"daemon-{runs}.err"
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(
                cli("run", "--config", str(config), *args),
                stdout=out, stderr=err, cwd=ROOT, env={**os.environ, **(env or {})},
            )

    def stderr(self) -> str:
        return self.err_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def write_config(path: Path, data_dir: Path, address: str, **general) -> Path:
    settings = {
        "data_dir": str(data_dir),
        "data_buffer_size": 1,
        "data_format": ["csv", "json"],
        "poll_interval": 0.002 if address.startswith(("sim:", "tcp://")) else 0.1,  # a real meter: 0.1 s at least
        "status_interval": 2,
        **general,
    }
    lines = ["general:"] + [f"  {k}: {json.dumps(v)}" for k, v in settings.items()]
    lines += ["device:", f"  address: {json.dumps(address)}", "  timeout: 2"]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_until_closed_hours(simulator, daemons, tmp_path: Path, seed: str, hours: int):
    """A real service reading a simulator at 600x until ``hours`` closed hours, stopped cleanly:
    (its config, its data folder)."""
    from .datacheck import closed_hours

    (address,) = simulator("--seed", seed, "--clock-speed", "600").addresses
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "config.yaml", data_dir, address, poll_interval=1 / 600)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(closed_hours(data_dir)) >= hours, timeout=120, what=f"{hours} closed hours")
    assert daemon.stop() == 0
    return config, data_dir


def line_of(path: Path, text: str) -> int:
    """The line (from 1) of ``path`` where ``text`` first appears: what an error should name."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


MISSING_KEY_HINT = ("copy the service account's JSON key there, or remove service_account_json to use "
                    "Application Default Credentials")


@pytest.fixture
def daemons():
    started: List[DaemonProcess] = []

    def start(*args, **kwargs) -> DaemonProcess:
        daemon = DaemonProcess(*args, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
        # pytest shows this only under a failed test: what the service said, for a failure in CI
        print(f"--- the last lines of {daemon.err_path.name}:", *daemon.stderr().splitlines()[-60:], sep="\n")


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real, small tmpfs at ``path``: writes past ``size`` fail with ENOSPC from the kernel."""
    path.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill_disk(path: Path) -> Path:
    """Write ``path`` until its file system says ENOSPC, down to the last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"x" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Emulator:
    """A real BigQuery emulator (crucible) on a loopback port, state kept in a DuckDB file."""

    PROJECT = "test-project"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = workdir / "bigquery.duckdb"
        self.log = workdir / "emulator.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Emulator":
        crucible = Path(sys.executable).parent / "crucible"
        if not crucible.exists():
            pytest.skip("the BigQuery emulator (crucible-emulator, Python 3.11+) is not installed here")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(crucible), "serve", "--dialect", "bigquery", "--host", "127.0.0.1",
                 "--port", str(self.port), "--database", str(self.database)],
                stdout=log, stderr=log,
            )

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                return False

        wait_for(accepting, timeout=30, what="the BigQuery emulator")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(project=self.PROJECT, credentials=AnonymousCredentials(),
                               client_options={"api_endpoint": self.url})

    def query(self, sql: str) -> list:
        return [tuple(row.values()) for row in self.client().query(sql).result()]


@pytest.fixture
def emulator(tmp_path):
    emu = Emulator(tmp_path)
    yield emu
    emu.stop()


# --- the fast subset: `pytest -m "not process"` -------------------------------------------------

# Fixtures that start a real process (a daemon, a simulator, a broker, the emulator, a mount).
# What a library runs by itself, once, wherever it is first used: not the test's own process.
LIBRARY_TOOLS = {"fc-list"}  # matplotlib building its font cache on a fresh machine
PROCESS_FIXTURES = {"daemons", "simulator", "emulator", "proxy", "brokers", "installed", "tiny_disk", "influxd"}


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "process: starts a real process (the daemon, a broker, a tool); "
                                       "`-m 'not process'` leaves these out")


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


@pytest.fixture(autouse=True)
def _in_process_stays_in_process(request, monkeypatch):
    """A test not marked `process` that starts one fails here, so the fast subset stays honest."""
    if request.node.get_closest_marker("process"):
        return

    real = subprocess.Popen._execute_child

    def refuse(self, args, *rest, **kwargs):
        if os.path.basename(str(args[0] if isinstance(args, (list, tuple)) else args)) in LIBRARY_TOOLS:
            return real(self, args, *rest, **kwargs)
        raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}): mark it "
                             "`@pytest.mark.process` (or the module: `pytestmark = pytest.mark.process`)")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
