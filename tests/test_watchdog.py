"""sd_notify over a real datagram socket, with the daemon in this process so a reader can hang."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from pathlib import Path

from wattchecker_client.config import parse_config
from wattchecker_client.daemon import Daemon
from wattchecker_client.notify import Notifier

from .conftest import wait_for


def listen(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    return sock


def collect_until(sock, done, what: str, bound: float = 60.0) -> list:
    """(arrival time, message) for every datagram until ``done(got)``; fail after ``bound`` seconds."""
    got = []
    end = time.monotonic() + bound
    while not done(got):
        assert time.monotonic() < end, f"no {what} within {bound:g} s: {[m for _, m in got[-5:]]}"
        try:
            got.append((time.monotonic(), sock.recv(4096).decode()))
        except socket.timeout:
            pass
    return got


def pings(got: list) -> list:
    return [t for t, m in got if m == "WATCHDOG=1"]


def silent_for(seconds: float):
    """Done once a ping came and then none for ``seconds``: the pings stopped, however late they began."""
    return lambda got: bool(pings(got)) and time.monotonic() - max(pings(got)) >= seconds


def test_watchdog_pings_stop_while_a_reader_hangs_and_resume_after(tmp_path, caplog):
    notify = listen(tmp_path / "notify.sock")
    release = threading.Event()

    def hanging_rfcomm(mac, channel, timeout):
        """Like a kernel RFCOMM connect that ignores its timeout."""
        release.wait()
        raise ConnectionRefusedError(111, "Connection refused")

    config = parse_config(
        f"general:\n  data_dir: {tmp_path / 'data'}\n  watchdog_stall: 0.5\n"
        "device:\n  address: '00:0C:BF:12:34:56'\n  channel: 6\n"
    )
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"}
    daemon = Daemon(config, rfcomm_factory=hanging_rfcomm, environ=env)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        # Fed while the reader is fresh, then not: 1.5 s without a ping is three times watchdog_stall.
        hung = collect_until(notify, silent_for(1.5), "silence while the reader hangs")
        release.set()  # the connect fails at last; the reader backs off and lives again
        collect_until(notify, lambda got: len(pings(got)) >= 3, "pings once it lives again")  # fails if none come
    finally:
        release.set()
        daemon.stop.set()
        runner.join(20)
        notify.close()
    assert hung[0][1].startswith("READY=1\n")
    assert [m for _, m in hung[1:]] == ["WATCHDOG=1"] * len(hung[1:])  # then only pings, until they stopped
    assert "no sign of life from reader wattchecker" in caplog.text
    assert not runner.is_alive()


def test_notifier_is_silent_without_systemd_and_honours_watchdog_pid():
    assert not Notifier({}).enabled
    assert Notifier({"WATCHDOG_USEC": "1000000"}).watchdog_interval == 0.5
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_abstract_notify_socket(tmp_path):
    name = f"wattchecker-test-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    notifier.ready("up")
    assert sock.recv(100) == b"READY=1\nSTATUS=up"
    notifier.close()
    sock.close()


def test_without_bigquery_no_uploader_thread_yet_old_hours_are_deleted(tmp_path):
    """Retention runs in its own thread; each thread shows its name in top -H and ps -L."""
    data = tmp_path / "data"
    data.mkdir()
    old = data / "wattchecker-data.csv.2020-01-01_00.gz"
    with gzip.open(old, "wt") as f:
        f.write("2020-01-01 00:00:00,100.00,1000.00,100.00\n")
    config = parse_config(
        f"general:\n  data_dir: {data}\n  retention_days: 1\n  status_interval: 1\n  log_file: null\n"
        "device:\n  address: 'sim://'\n"
    )
    daemon = Daemon(config, environ={})
    runner = threading.Thread(target=daemon.run)
    runner.start()
    named = {"writer", "reader wattchec", "retention"}
    try:
        wait_for(lambda: not old.exists(), 30, what="retention to delete the old hour")
        # Each thread names itself once it runs: wait for the names, not for the threads to start.
        threads = wait_for(lambda: named <= thread_names() and thread_names(), 30, what=f"threads named {named}")
    finally:
        daemon.stop.set()
        runner.join(30)
    assert "uploader" not in threads
    assert not runner.is_alive()


def thread_names() -> set:
    """What top -H and ps -L show for this process's threads (one may end while they are read)."""
    names = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except FileNotFoundError:
            pass
    return names
