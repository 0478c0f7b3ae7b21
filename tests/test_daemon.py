"""The real `run` process against the simulated meter: files, signals, restarts, SIGKILL."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import MISSING_KEY_HINT, ROOT, Emulator, fill_disk, line_of, run_cli, tmpfs, wait_for, write_config
from .datacheck import check_data_dir, closed_hours, read

SEED = 7
FAST = ["--seed", str(SEED), "--clock-speed", "1200"]
FAULTS = [
    "--corrupt-rate", "0.002",
    "--junk-rate", "0.01",
    "--stray-ack-rate", "0.01",
    "--bad-status-rate", "0.005",
    "--split-writes",
    "--latency", "0.0005",
    "--drop-after", "300",
]


def final_rows_received(log: str) -> int:
    (count,) = re.findall(r"final status writer: rows_received=(\d+)", log)
    return int(count)


def csv_seconds(data_dir: Path) -> set:
    return set(check_data_dir(data_dir, SEED)["csv"])


def run_until_closed(daemons, config, tmp_path, data_dir, hours):
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(closed_hours(data_dir)) >= hours, timeout=90, what=f"{hours} closed hours")
    assert daemon.stop() == 0, daemon.stderr()
    return final_rows_received(daemon.stderr())


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_every_fault_on_nothing_corrupted_nothing_lost_across_sigterm_and_restart(
    simulator, daemons, tmp_path, transport
):
    if transport == "tcp":
        (address,) = simulator(*FAST, *FAULTS).addresses
    else:
        (address,) = simulator("--pty", "--link", str(tmp_path / "rfcomm0"), *FAST, *FAULTS).addresses
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "config.yaml", data_dir, address)

    first = run_until_closed(daemons, config, tmp_path, data_dir, hours=3)
    after_first = csv_seconds(data_dir)
    assert len(after_first) == first  # every row received before SIGTERM is on disk
    hours_before = len(closed_hours(data_dir))

    second = run_until_closed(daemons, config, tmp_path, data_dir, hours=hours_before + 1)
    after_second = csv_seconds(data_dir)
    assert after_first <= after_second
    assert len(after_second) == first + second
    assert (data_dir / "wattchecker-client.log").exists()


def test_sigkill_then_restart_recovers_every_file(simulator, daemons, tmp_path):
    (address,) = simulator(*FAST).addresses
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "config.yaml", data_dir, address)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(closed_hours(data_dir)) >= 1, timeout=60, what="a closed hour")
    wait_for(lambda: (data_dir / "wattchecker-data.csv").exists(), timeout=30, what="a current file")
    daemon.stop(signal.SIGKILL)
    on_disk = set()
    for path in data_dir.glob("wattchecker-data.csv*"):
        text = (path.read_text() if path.suffix != ".gz" else "\n".join(read(path)) + "\n")
        on_disk |= {line.split(",")[0] for line in text.splitlines(keepends=True) if line.endswith("\n")}

    restarted = daemons(config, tmp_path)
    wait_for(lambda: "running:" in restarted.stderr(), timeout=30, what="the restart")
    assert restarted.stop() == 0
    held = check_data_dir(data_dir, SEED, formats_agree=False)
    final = {t.strftime("%Y-%m-%d %H:%M:%S") for t in held["csv"]}
    assert on_disk <= final  # all that was on disk at the kill survived, nothing twice (checked above)
    # A flush writes the JSON first (docs/data-folder.md). If the kill fell between
    # its JSON and CSV appends, the CSV lacks that one flush's rows: a single
    # unbroken run of the JSON's rows, nothing else.
    csv, json_ = set(held["csv"]), sorted(held["json"])
    assert csv <= set(json_)
    missing = [i for i, t in enumerate(json_) if t not in csv]
    if missing:
        assert missing == list(range(missing[0], missing[-1] + 1))


def test_ready_watchdog_status_and_stopping_reach_a_real_notify_socket(daemons, tmp_path):
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(60)  # a failure bound for each message, the first one after the process starts
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", "sim://?clock_speed=10", poll_interval=0.1)
    daemon = daemons(config, tmp_path, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
    messages = [sock.recv(4096).decode() for _ in range(6)]
    assert messages[0].startswith("READY=1\nSTATUS=reading wattchecker at sim://")
    assert messages[1:] == ["WATCHDOG=1"] * 5
    assert daemon.stop() == 0
    sock.settimeout(0.5)
    rest = []
    try:
        while True:
            rest.append(sock.recv(4096).decode())
    except socket.timeout:
        pass
    finally:
        sock.close()
    assert any(m.startswith("STOPPING=1\nSTATUS=stopping") for m in rest)


@pytest.mark.process
def test_a_broken_config_stops_start_up_with_one_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("general:\n  data_buffer_size: soon\ndevice:\n  address: sim://\n")
    result = run_cli("run", "--config", str(config), timeout=30)
    assert result.returncode == 2
    assert result.stderr == (
        f"wattchecker-client: error: {config}:2: general.data_buffer_size: must be a number, got 'soon'\n"
    )
    assert not (tmp_path / "log").exists()


@pytest.mark.process
def test_check_config_reports_what_it_would_run(tmp_path):
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", "00:0C:BF:12:34:56")
    result = run_cli("check-config", "--config", str(config), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{config}: OK"
    assert "meters: wattchecker at 00:0C:BF:12:34:56" in result.stdout
    assert "BigQuery: not configured" in result.stdout
    assert not (tmp_path / "data").exists()  # nothing started, nothing created


def test_several_meters_each_get_their_own_files(daemons, tmp_path):
    data_dir = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"general:\n  data_dir: {data_dir}\n  data_buffer_size: 1\n  poll_interval: 0.002\n"
        "devices:\n"
        "  - name: aircon\n    address: 'sim://?seed=7&clock_speed=1200'\n"
        "  - name: fridge\n    address: 'sim://?seed=8&clock_speed=1200'\n"
    )
    daemon = daemons(config, tmp_path)
    wait_for(lambda: list(data_dir.glob("wattchecker-data-fridge.csv.*.gz"))
             and list(data_dir.glob("wattchecker-data-aircon.csv.*.gz")), timeout=60, what="both meters' hours")
    assert daemon.stop() == 0, daemon.stderr()
    aircon = check_data_dir(data_dir, 7, base="wattchecker-data-aircon")["csv"]
    fridge = check_data_dir(data_dir, 8, base="wattchecker-data-fridge")["csv"]
    assert aircon and fridge
    assert not (data_dir / "wattchecker-data.csv").exists()
    assert re.search(r"final status aircon: readings=\d+", daemon.stderr())
    assert re.search(r"final status fridge: readings=\d+", daemon.stderr())


def test_a_full_disk_keeps_rows_in_memory_until_space_returns(daemons, tmp_path):
    """A real 256 KiB tmpfs as the data folder, filled up while the daemon runs."""
    with tmpfs(tmp_path / "disk", "256k") as data_dir:
        config = write_config(tmp_path / "config.yaml", data_dir, "sim://?seed=7&clock_speed=20",
                              poll_interval=0.05, data_format=["json"], log_file=None)
        daemon = daemons(config, tmp_path)
        wait_for(lambda: (data_dir / "wattchecker-data.json").exists(), what="the first flush")
        filler = fill_disk(data_dir / "filler")
        wait_for(lambda: "cannot write" in daemon.stderr(), what="the disk-full error")
        wait_for(lambda: daemon.stderr().count("status writer") >= 2, what="a status line while full")
        filler.unlink()
        wait_for(lambda: "writing works again" in daemon.stderr(), what="the recovery")
        assert daemon.stop() == 0, daemon.stderr()
        log = daemon.stderr()
        assert log.count("cannot write") == 1  # once per outage, not once per flush
        seconds = check_data_dir(data_dir, SEED)["json"]
        assert len(seconds) == final_rows_received(log)  # nothing lost


def ledger_keys(data_dir: Path) -> set:
    from wattchecker_client.upload.ledger import read_ledger

    return set(read_ledger(data_dir)["uploaded"])


def rows_in_uploaded_files(data_dir: Path) -> list:
    """The JSON rows of every closed hour the ledger says is in BigQuery."""
    rows = []
    for key in ledger_keys(data_dir):
        stem, rest = key.split(".", 1)
        rows += [json.loads(line) for line in read(data_dir / f"{stem}.json.{rest}.gz")]
    return rows


def test_uploads_heal_through_an_emulator_that_starts_late_and_gets_killed(emulator, simulator, daemons, tmp_path):
    (address,) = simulator(*FAST).addresses
    data_dir = tmp_path / "data"
    # Polled every 50 ms: about 60 rows an hour file, so a busy machine's emulator keeps up with an hour each 3 s.
    config = write_config(tmp_path / "config.yaml", data_dir, address, poll_interval=0.05)
    with open(config, "a") as f:
        f.write(
            f"bigquery:\n  dataset_id: wattchecker\n  table_id: power\n  project_id: {Emulator.PROJECT}\n"
            f"  api_endpoint: {emulator.url}\n  create_table: true\n  max_backoff: 2\n"
        )
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(closed_hours(data_dir, "json")) >= 2, what="two closed hours while BigQuery is down")
    assert ledger_keys(data_dir) == set()
    emulator.start()  # BigQuery comes back: the backlog heals by itself
    wait_for(lambda: len(ledger_keys(data_dir)) >= 2, timeout=180, what="the backlog uploaded")
    emulator.stop(signal.SIGKILL)  # and dies again, perhaps mid-upload
    closed_while_dead = len(closed_hours(data_dir, "json"))
    wait_for(lambda: len(closed_hours(data_dir, "json")) > closed_while_dead, what="an hour closed while down")
    emulator.start()
    wait_for(lambda: len(ledger_keys(data_dir)) > closed_while_dead - 1, timeout=180, what="uploads after the restart")
    assert daemon.stop() == 0, daemon.stderr()
    rows = rows_in_uploaded_files(data_dir)
    ((count, watts),) = emulator.query(f"SELECT COUNT(*), SUM(W) FROM `{Emulator.PROJECT}.wattchecker.power`")
    assert count == len(rows)  # exactly the rows of the uploaded files: none twice, none missing
    assert watts == pytest.approx(sum(r["W"] for r in rows))
    # (whether the first attempts were logged as waiting depends on the client's own
    # 15 s of quick retries overlapping the emulator's start: not asserted)
    assert re.search(r"final status uploader: uploaded=[1-9]\d*", daemon.stderr())


@pytest.mark.process
def test_an_unreadable_key_file_stops_start_up_with_one_line(tmp_path):
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", "sim://")
    with open(config, "a") as f:
        f.write("bigquery:\n  service_account_json: missing-key.json\n  dataset_id: d\n  table_id: t\n")
    result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"wattchecker-client: error: {config}:{line_of(config, 'service_account_json')}: "
        f"bigquery.service_account_json: cannot read {tmp_path / 'missing-key.json'}: "
        f"No such file or directory: {MISSING_KEY_HINT}"
    )



@pytest.mark.process
def test_a_service_without_bigquery_loads_no_openssl(tmp_path):
    """hashlib's OpenSSL is about 4 MB, a fifth of the service: only an uploader may bring it in."""
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", "sim://", log_file=None, time_sync_wait=0,
                          retention_days=30)
    script = (
        "import sys, threading, time\n"
        "from pathlib import Path\n"
        "from wattchecker_client.config import load_config\n"
        "from wattchecker_client.daemon import Daemon\n"
        f"daemon = Daemon(load_config({str(config)!r}), environ={{}})\n"
        "runner = threading.Thread(target=daemon.run)\n"
        "runner.start()\n"
        f"while not Path({str(tmp_path / 'data' / 'wattchecker-data.csv')!r}).exists():\n"
        "    time.sleep(0.05)\n"
        "daemon.stop.set()\n"
        "runner.join()\n"
        "print(sorted(m for m in sys.modules if m in ('_hashlib', '_ssl') or m.endswith('upload.uploader')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
