"""The daemon against the simulated meter, side by side with the original client.

Run: .venv/bin/python benchmarks/daemon.py [ORIGINAL_DIR] [--seconds 60] [--flat-out-seconds 15]

ORIGINAL_DIR is a checkout of the original client (github.com/j3iiifn/wattchecker-client;
it needs crcmod and PyYAML). Without it, only this client is measured.

  1 Hz      this client's `run` process and the original's main.py, at the same time,
            each against its own `simulate` process at 1x over TCP on 127.0.0.1,
            same formats (csv, json) and buffer (180 s): CPU seconds per hour of
            sampling, peak RSS, wakeups per second (voluntary context switches)
            per thread, seconds captured.
  flat out  this client alone, the meter's clock at 2000x, polled as fast as it can:
            meter seconds captured per second of wall time (its headroom).

The original opens an AF_BLUETOOTH RFCOMM socket after asking pybluez for the
meter. A stand-in `bluetooth` module, written to a temporary folder put first
on its PYTHONPATH, answers those questions and routes that socket to the
simulator's TCP port; none of the original's files is changed or copied here.
It runs in a temporary folder holding copies of its config files, with
standard output discarded as its unit file does, and stops on SIGINT (its
KillSignal). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

CLI = [sys.executable, "-m", "wattchecker_client"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE = 3.0  # seconds after start-up before measuring: start-up is not steady state

BLUETOOTH_STAND_IN = '''\
"""Stand-in for pybluez, written by benchmarks/daemon.py: one meter, its RFCOMM socket routed to TCP."""
import os
import socket

HOST, PORT = os.environ["WATTCHECKER_SIM_TCP"].rsplit(":", 1)
MAC = "00:0C:BF:00:00:01"
RFCOMM = 3
socket.AF_BLUETOOTH = getattr(socket, "AF_BLUETOOTH", 31)
socket.BTPROTO_RFCOMM = getattr(socket, "BTPROTO_RFCOMM", 3)


class _RoutedSocket(socket.socket):
    """An AF_BLUETOOTH stream socket becomes a TCP one; connect((MAC, channel)) goes to the simulator."""

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if family == socket.AF_BLUETOOTH:
            family, proto = socket.AF_INET, 0
        super().__init__(family, type, proto, fileno)

    def connect(self, address):
        if isinstance(address, tuple) and address[0] == MAC:
            address = (HOST, int(PORT))
        return super().connect(address)


socket.socket = _RoutedSocket


class BluetoothSocket(_RoutedSocket):
    def __init__(self, proto=RFCOMM):
        super().__init__(socket.AF_BLUETOOTH, socket.SOCK_STREAM, socket.BTPROTO_RFCOMM)


def discover_devices(lookup_names=False, **kwargs):
    return [(MAC, "WATT CHECKER")] if lookup_names else [MAC]


def find_service(address=None, **kwargs):
    return [{"protocol": "RFCOMM", "port": 1, "host": address, "name": "SPP"}]
'''


@dataclass
class Sample:
    """One look at a process: per thread (name, CPU ms, voluntary context switches)."""

    at: float
    threads: Dict[int, Tuple[str, float, int]] = field(default_factory=dict)


def thread_cpu_ms(task: Path) -> float:
    """CPU time of one thread: the scheduler's nanosecond sum where offered, else clock ticks."""
    try:
        match = re.search(r"se\.sum_exec_runtime\s*:\s*([\d.]+)", (task / "sched").read_text())
        if match and float(match.group(1)) > 0:
            return float(match.group(1))
    except OSError:
        pass
    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / CLK_TCK  # utime + stime


def sample(pid: int) -> Sample:
    taken = Sample(time.monotonic())
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            tid = int(task.name)
            name = "main" if tid == pid else (task / "comm").read_text().strip()
            switches = int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", (task / "status").read_text()).group(1))
            taken.threads[tid] = (name, thread_cpu_ms(task), switches)
        except (OSError, AttributeError):
            continue  # the thread ended meanwhile
    return taken


def peak_rss_mib(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024


@dataclass
class Client:
    """A client process under measurement, and how to tell it is up, stop it, count its rows."""

    label: str
    process: subprocess.Popen
    is_up: Callable[[], bool]
    stop_signal: int
    rows: Callable[[], int]
    errors: Path
    start: Optional[Sample] = None
    end: Optional[Sample] = None
    rss: float = 0.0
    captured: int = 0
    up_at: float = 0.0
    stopped_at: float = 0.0

    def figures(self) -> dict:
        elapsed = self.end.at - self.start.at
        per_thread = []
        for tid, (name, cpu, switches) in sorted(self.end.threads.items()):
            _, cpu0, switches0 = self.start.threads.get(tid, (name, 0.0, 0))
            per_thread.append((name, (switches - switches0) / elapsed, (cpu - cpu0) / elapsed))
        cpu_ms = sum(cpu for _, _, cpu in per_thread) * elapsed
        return {
            "elapsed": elapsed,
            "cpu_per_hour": cpu_ms / 1000 / elapsed * 3600,
            "rss": self.rss,
            "wakeups": sum(w for _, w, _ in per_thread),
            "threads": per_thread,
            "captured": self.captured,
            "captured_per_second": self.captured / (self.stopped_at - self.up_at),
        }


def start_simulator(speed: float) -> Tuple[subprocess.Popen, str]:
    sim = subprocess.Popen(CLI + ["simulate", "--clock-speed", str(speed)], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    return sim, sim.stdout.readline().split("listening on ", 1)[1].strip()


def start_ours(workdir: Path, address: str, poll: float, tag: str) -> Client:
    data_dir = workdir / f"data-{tag}"
    config = workdir / f"config-{tag}.yaml"
    config.write_text(
        f"general:\n  data_dir: {json.dumps(str(data_dir))}\n  data_format: [csv, json]\n"
        f"  poll_interval: {poll}\n  data_buffer_size: 180\n"
        f"device:\n  address: {json.dumps(address)}\n"
    )
    err = workdir / f"daemon-{tag}.err"
    with open(err, "w") as f:
        process = subprocess.Popen(CLI + ["run", "--config", str(config)], stderr=f)

    def rows() -> int:
        found = re.findall(r"final status writer: rows_received=(\d+)", err.read_text())
        return int(found[-1]) if found else 0

    return Client("this client", process, lambda: "running:" in err.read_text(), signal.SIGTERM, rows, err)


def start_original(original: Path, workdir: Path, address: str) -> Client:
    """main.py from a folder of its own, its RFCOMM socket routed to ``address`` (tcp://HOST:PORT)."""
    home = workdir / "original"
    (home / "log").mkdir(parents=True)
    for name in ("logging_config_main.yaml", "logging_config_csv.yaml", "logging_config_json.yaml"):
        shutil.copy(original / name, home / name)
    (home / "config.yaml").write_text("general:\n  data_buffer_size: 180\n  data_format: [csv, json]\n")
    stand_in = workdir / "stand-in"
    stand_in.mkdir()
    (stand_in / "bluetooth.py").write_text(BLUETOOTH_STAND_IN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stand_in), os.environ.get("PYTHONPATH", "")]),
               WATTCHECKER_SIM_TCP=address.split("://", 1)[1])
    errors = workdir / "original.err"
    with open(errors, "w") as err:
        process = subprocess.Popen([sys.executable, str(original / "main.py"), "--config", "config.yaml"],
                                   cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=err)
    log_file = home / "log" / "wattchecker-client.log"

    def rows() -> int:
        return sum(len(read_maybe_gzipped(p).splitlines()) for p in (home / "log").glob("wattchecker-data.csv*"))

    return Client("original", process,
                  lambda: log_file.exists() and "Starting measurement" in log_file.read_text(),
                  signal.SIGINT, rows, errors)


def read_maybe_gzipped(path: Path) -> str:
    import gzip

    return (gzip.open if path.suffix == ".gz" else open)(path, "rt").read()


def measure(clients: List[Client], seconds: float) -> None:
    """Wait for every client, let start-up settle, then take the same window of each."""
    deadline = time.monotonic() + 30
    while not all(c.is_up() for c in clients):
        for c in clients:
            if c.process.poll() is not None:
                tail = "\n".join(c.errors.read_text().splitlines()[-5:])
                raise SystemExit(f"{c.label} exited with status {c.process.returncode} before it was up:\n{tail}")
        if time.monotonic() > deadline:
            raise SystemExit("a client did not come up within 30 s")
        time.sleep(0.05)
    for c in clients:
        c.up_at = time.monotonic()
    time.sleep(SETTLE)
    for c in clients:
        c.start = sample(c.process.pid)
    time.sleep(seconds)
    for c in clients:
        c.end = sample(c.process.pid)
        c.rss = peak_rss_mib(c.process.pid)


def stop(clients: List[Client], simulators: List[subprocess.Popen]) -> None:
    for c in clients:
        c.stopped_at = time.monotonic()
        if c.process.poll() is None:
            c.process.send_signal(c.stop_signal)
    for c in clients:
        try:
            c.process.wait(60)
        except subprocess.TimeoutExpired:
            c.process.kill()
        c.captured = c.rows()
    for sim in simulators:
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)


def side_by_side(seconds: float, original: Optional[Path], workdir: Path) -> List[dict]:
    simulators, clients = [], []
    try:
        sim, address = start_simulator(1.0)
        simulators.append(sim)
        clients.append(start_ours(workdir, address, 1.0, "1hz"))
        if original is not None:
            sim, address = start_simulator(1.0)
            simulators.append(sim)
            clients.append(start_original(original, workdir, address))
        measure(clients, seconds)
    finally:
        stop(clients, simulators)
    return [c.figures() for c in clients]


def flat_out(seconds: float, workdir: Path) -> dict:
    sim, address = start_simulator(2000.0)
    client = start_ours(workdir, address, 0.0005, "flat-out")
    try:
        measure([client], seconds)
    finally:
        stop([client], [sim])
    return client.figures()


def print_side_by_side(labels: List[str], results: List[dict]) -> None:
    width = 16
    together = ", run at the same time" if len(results) > 1 else ""
    print(f"1 Hz, {results[0]['elapsed']:.0f} s{together}:".ljust(44)
          + "".join(label.rjust(width) for label in labels))
    rows = [
        ("seconds captured per second", lambda r: f"{r['captured_per_second']:.2f}"),
        ("CPU seconds per hour of sampling", lambda r: f"{r['cpu_per_hour']:.2f}"),
        ("  = ms of CPU per reading", lambda r: f"{r['cpu_per_hour'] / 3.6:.2f}"),
        ("peak RSS, MiB", lambda r: f"{r['rss']:.1f}"),
        ("wakeups per second, all threads", lambda r: f"{r['wakeups']:.2f}"),
    ]
    for title, cell in rows:
        print(f"  {title}".ljust(44) + "".join(cell(r).rjust(width) for r in results))
    if len(results) == 2:
        ours, theirs = results
        print(f"  ratio this client / original: CPU {ours['cpu_per_hour'] / theirs['cpu_per_hour']:.2f}x, "
              f"peak RSS {ours['rss'] / theirs['rss']:.2f}x, wakeups {ours['wakeups'] / theirs['wakeups']:.2f}x")
    for label, r in zip(labels, results):
        print(f"  per thread, {label} (wakeups/s, ms CPU/s):")
        for name, wakeups, cpu in r["threads"]:
            print(f"    {name:<18}{wakeups:8.2f}{cpu:10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original", nargs="?", type=Path,
                        help="the original client's folder (with main.py); without it, only this client runs")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the 1 Hz window")
    parser.add_argument("--flat-out-seconds", type=float, default=15.0, help="length of the flat-out run (0: skip)")
    args = parser.parse_args()
    if args.original is not None and not (args.original / "main.py").is_file():
        parser.error(f"{args.original}: no main.py here; give the original client's folder")
    original = args.original.resolve() if args.original else None
    with tempfile.TemporaryDirectory() as tmp:
        results = side_by_side(args.seconds, original, Path(tmp))
        fast = flat_out(args.flat_out_seconds, Path(tmp)) if args.flat_out_seconds > 0 else None
    labels = ["this client"] + (["original"] if original else [])
    print_side_by_side(labels, results)
    if original is None:
        print("  (the original client was not measured: give its folder as the first argument)")
    if fast:
        print(f"flat out ({fast['elapsed']:.0f} s, meter clock at 2000x): {fast['captured_per_second']:.0f} "
              f"meter seconds captured per second elapsed; {fast['cpu_per_hour'] / 3600:.2f} cores busy; "
              f"peak RSS {fast['rss']:.1f} MiB")


if __name__ == "__main__":
    main()
