"""End to end: real `simulate` and `read` processes over TCP and a pty, every fault on."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time

import pytest

from wattchecker_client.protocol import Measurement, quantize
from wattchecker_client.simulator import air_conditioner

from .conftest import ROOT, cli, run_cli

SEED = "7"
EVERY_FAULT = [
    "--seed", SEED,
    "--clock-speed", "10",
    "--corrupt-rate", "0.1",
    "--junk-rate", "0.1",
    "--stray-ack-rate", "0.1",
    "--bad-status-rate", "0.05",
    "--split-writes",
    "--latency", "0.01",
    "--drop-after", "8",
]


def parse_json_rows(stdout: str) -> list:
    rows = []
    for line in stdout.splitlines():
        row = json.loads(line)
        assert list(row) == ["datetime", "V", "mA", "W"]
        when = dt.datetime.strptime(row["datetime"], "%Y-%m-%d %H:%M:%S")
        rows.append(Measurement(when, row["V"], row["mA"], row["W"]))
    return rows


def assert_rows_are_the_meters_own(rows: list) -> None:
    """Every row is exactly what the simulated meter measured at that second: nothing corrupted."""
    for row in rows:
        assert row == quantize(row)
        assert row == air_conditioner(row.time, int(SEED)), row
    times = [r.time for r in rows]
    assert all(a != b for a, b in zip(times, times[1:])), "a second was printed twice in a row"


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_read_prints_ten_valid_rows_through_every_fault(simulator, tmp_path, transport):
    if transport == "tcp":
        sim = simulator(*EVERY_FAULT)
    else:
        sim = simulator("--pty", "--link", str(tmp_path / "rfcomm0"), *EVERY_FAULT)
    (address,) = sim.addresses
    result = run_cli("read", address, "--count", "10", "--interval", "0.1")
    assert result.returncode == 0, result.stderr
    rows = parse_json_rows(result.stdout)
    assert len(rows) == 10
    assert_rows_are_the_meters_own(rows)
    assert "10 readings printed" in result.stderr
    assert sim.stop() == 0


def test_read_csv_format(simulator):
    (address,) = simulator("--seed", SEED, "--clock-speed", "10").addresses
    result = run_cli("read", address, "--count", "3", "--interval", "0.1", "--format", "csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        stamp, volts, milliamps, watts = line.split(",")
        m = air_conditioner(dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S"), int(SEED))
        assert (volts, milliamps, watts) == (f"{m.volts:.2f}", f"{m.milliamps:.2f}", f"{m.watts:.2f}")


@pytest.mark.process
def test_read_the_embedded_simulator():
    result = run_cli("read", "sim://?clock_speed=10&seed=7", "--count", "3", "--interval", "0.1")
    assert result.returncode == 0, result.stderr
    assert_rows_are_the_meters_own(parse_json_rows(result.stdout))


def test_ctrl_c_stops_read_cleanly(simulator):
    sim = simulator("--seed", SEED)
    (address,) = sim.addresses
    proc = subprocess.Popen(
        cli("-v", "read", address), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    first = proc.stdout.readline()  # a reading arrived: the session is up
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "Traceback" not in err
    rows = parse_json_rows(first + out)
    assert_rows_are_the_meters_own(rows)
    assert f"{len(rows)} readings printed" in err
    log = sim.log()
    assert log.index("measurement started") < log.index("measurement stopped")


def test_sigterm_stops_the_simulator_and_removes_its_link(simulator, tmp_path):
    link = tmp_path / "rfcomm0"
    sim = simulator("--pty", "--link", str(link), "--tcp", "127.0.0.1:0", expect=2)
    assert sim.addresses[1] == str(link) and link.is_symlink()
    assert sim.addresses[0].startswith("tcp://127.0.0.1:")
    assert sim.stop() == 0
    assert not link.exists()


# A stop signal handled while the main thread holds the stop Event's own lock
# (stop.wait() holds it for a moment at each check) used to wait for itself
# forever: the simulator or the service then ignored SIGTERM until killed. The
# script holds that lock while the signal is handled, so the moment is certain.
SIGNAL_WHILE_WAITING = """
import signal, threading
from wattchecker_client.commands.common import on_stop_signals
stop = threading.Event()
on_stop_signals(stop)
with stop._cond:
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
    sum(range(1000))  # a few bytecodes: the handler runs here, with the lock held
print("handled", flush=True)
stop.wait()
print("stopped", flush=True)
"""


@pytest.mark.process
def test_a_stop_signal_is_never_lost_in_the_moment_the_main_thread_checks_stop():
    result = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_WAITING], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)  # a failure bound: a deadlock never ends
    assert (result.returncode, result.stdout, result.stderr) == (0, "handled\nstopped\n", "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["read", "rfcomm0"], "address 'rfcomm0' is not a Bluetooth MAC"),
        (["read", "sim://?speed=3"], "unknown simulator option 'speed'"),
        (["simulate", "--corrupt-rate", "3"], "corrupt_rate must be between 0 and 1"),
    ],
)
@pytest.mark.process
def test_setup_errors_are_one_line_and_exit_2(args, message):
    result = run_cli(*args, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


@pytest.mark.process
def test_read_retries_a_meter_that_is_not_there_yet_and_says_so_once():
    proc = subprocess.Popen(
        cli("read", "tcp://127.0.0.1:9", "--interval", "0.1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    first = proc.stderr.readline()  # the first failed connect, however long the start took
    time.sleep(2)  # a few more attempts, which must stay quiet
    proc.send_signal(signal.SIGTERM)
    out, rest = proc.communicate(timeout=60)
    err = first + rest
    assert proc.returncode == 0 and out == ""
    assert err.count("reconnecting") == 1
    assert "tcp://127.0.0.1:9: connect failed: Connection refused; reconnecting" in err
