"""What the http: section costs the service: CPU per hour at 1 Hz, with and without it.

Run: .venv/bin/python benchmarks/web.py [--seconds 120]

Six `run` processes at the same time (so the machine's other load falls on
all alike), each against its own `simulate` process over TCP on 127.0.0.1,
polling at 1 Hz with the default buffer (180 s), csv and json:

  plain, plain2   no http: section (two, so their difference shows the noise)
  idle, idle2     http: configured, nobody connected
  page            http: with one page open (a server-sent-events client reading /events)
  scraped         http: scraped at /metrics every 15 s, as a Prometheus would

CPU is the on-CPU time of the process's threads (/proc/PID/task/*/schedstat,
in nanoseconds), after a settling period; printed as CPU seconds per hour and as a ratio to the mean of the two
plain runs. The issue's budget: idle at most 1.10. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

CLI = [sys.executable, "-m", "wattchecker_client"]
SETTLE = 8.0  # seconds: start-up (imports, restore, first connect) is not steady state
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """On-CPU time of every thread, in ns from schedstat (utime's 10 ms ticks are too coarse here)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that just ended
    return total / 1e9


class Setup:
    """One simulator and one service, with or without http:."""

    def __init__(self, name: str, workdir: Path, http: bool) -> None:
        self.name = name
        self.port = free_port() if http else None
        self.sim = subprocess.Popen(CLI + ["simulate"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    cwd=ROOT)
        address = self.sim.stdout.readline().split("listening on ", 1)[1].strip()
        folder = workdir / name
        folder.mkdir()
        config = {
            "general": {"data_dir": str(folder / "data"), "data_format": ["csv", "json"], "poll_interval": 1,
                        "log_file": None, "status_interval": 3600},
            "device": {"address": address},
        }
        text = json.dumps(config)  # JSON is YAML
        if http:
            text = text[:-1] + f', "http": {{"listen": "127.0.0.1:{self.port}"}}}}'
        (folder / "config.yaml").write_text(text)
        self.proc = subprocess.Popen(CLI + ["run", "--config", str(folder / "config.yaml")], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=open(folder / "stderr.log", "wb"))
        self.start_cpu: Optional[float] = None
        self.start_time = 0.0

    def mark(self) -> None:
        self.start_cpu, self.start_time = cpu_seconds(self.proc.pid), time.monotonic()

    def per_hour(self) -> float:
        return (cpu_seconds(self.proc.pid) - self.start_cpu) / (time.monotonic() - self.start_time) * 3600

    def stop(self) -> None:
        for proc in (self.proc, self.sim):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def open_page(port: int, stop: threading.Event, counts: Dict[str, int]) -> None:
    """A page's event stream, read line by line like a browser would, until ``stop``."""
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/events", timeout=30) as stream:
                for line in stream:
                    if line.startswith(b"event: "):
                        counts[line[7:].strip().decode()] = counts.get(line[7:].strip().decode(), 0) + 1
                    if stop.is_set():
                        return
        except OSError:
            stop.wait(0.5)


def scrape(port: int, stop: threading.Event, counts: Dict[str, int]) -> None:
    while not stop.wait(15):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                counts["scrapes"] = counts.get("scrapes", 0) + 1
                response.read()
        except OSError:
            pass


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="measured seconds (after settling)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        setups = [Setup("plain", Path(tmp), False), Setup("plain2", Path(tmp), False),
                  Setup("idle", Path(tmp), True), Setup("idle2", Path(tmp), True),
                  Setup("page", Path(tmp), True), Setup("scraped", Path(tmp), True)]
        page, scraped = setups[4], setups[5]
        stop = threading.Event()
        counts: Dict[str, int] = {}
        try:
            time.sleep(SETTLE)
            clients = [threading.Thread(target=open_page, args=(page.port, stop, counts), daemon=True),
                       threading.Thread(target=scrape, args=(scraped.port, stop, counts), daemon=True)]
            for client in clients:
                client.start()
            time.sleep(2)  # the page's first load is not steady state either
            for setup in setups:
                setup.mark()
            time.sleep(args.seconds)
            figures = {s.name: s.per_hour() for s in setups}
        finally:
            stop.set()
            for setup in setups:
                setup.stop()
    base = (figures["plain"] + figures["plain2"]) / 2
    print(f"1 Hz, {args.seconds:g} s measured, the six services side by side")
    print(f"{'setup':<9} {'CPU s/hour':>11} {'vs plain':>9}")
    for name, value in figures.items():
        print(f"{name:<9} {value:>11.2f} {value / base:>9.3f}")
    idle = (figures["idle"] + figures["idle2"]) / 2
    print(f"idle (mean of two) vs plain (mean of two): {idle / base:.3f}; "
          f"noise (plain vs plain2): {abs(figures['plain'] - figures['plain2']) / base:.3f}")
    print(f"page events read: {dict(sorted((k, v) for k, v in counts.items() if k != 'scrapes'))}; "
          f"scrapes: {counts.get('scrapes', 0)}")


if __name__ == "__main__":
    main()
