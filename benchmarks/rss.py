"""What a running service costs in memory, with and without the live page (`http:`).

Run: .venv/bin/python benchmarks/rss.py [--seconds 10] [--history-days 366]

Starts the real `run` process twice against the built-in simulated meter: once
with only the files, once with an `http:` section. After the page answers (or
the first rows are written) and `--seconds` more, prints each one's resident
set (VmRSS), its peak (VmHWM), and the shared objects mapped, naming the ones
that only an uploader or hashing pulls in (`_hashlib`, `_ssl`). With
``--history-days N`` each data folder first holds N days of closed hours and
their summaries, as after a year of service; the page's service is measured
once its energy counter is known: at its first start (counted from a year of
summaries, as after a lost ``energy.json``) and at a restart (from
``energy.json`` and the hours since). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WATCHED = ("_hashlib", "_ssl", "libcrypto", "libssl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(folder: Path, port: int = 0) -> Path:
    text = (f"general:\n  data_dir: {folder / 'data'}\n  data_format: [csv, json]\n  data_buffer_size: 1\n  log_file: null\n"
            "  time_sync_wait: 0\ndevice:\n  address: 'sim://'\n")
    if port:
        text += f"http:\n  listen: 127.0.0.1:{port}\n"
    path = folder / ("http.yaml" if port else "files.yaml")
    path.write_text(text)
    return path


def status(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def libraries(pid: int) -> set:
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1]
        if path.endswith(".so") or ".so." in path or ".cpython-" in path:
            names.add(os.path.basename(path))
    return names


def ready(folder: Path, port: int) -> bool:
    """Rows written; with the page, also the energy counter known (restored from the history)."""
    if port:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                return b"wattchecker_energy_joules_total{" in answer.read()
        except OSError:
            return False
    return (folder / "data" / "wattchecker-data.csv").exists()


def with_history(folder: Path, days: int) -> Path:
    """``days`` of closed hours and their summaries in the folder's data dir."""
    from history import generate  # benchmarks/history.py, beside this file

    from wattchecker_client.datadir import summarize_closed_hours

    data_dir = folder / "data"
    data_dir.mkdir()
    if days:
        generate(data_dir, days)
        summarize_closed_hours(data_dir, "wattchecker-data")
    return folder


def measure(folder: Path, port: int, seconds: float) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "wattchecker_client", "run", "--config", str(config(folder, port))],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not ready(folder, port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the service did not come up (exit {proc.poll()})")
            time.sleep(0.2)
        time.sleep(seconds)
        fields, libs = status(proc.pid), libraries(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    watched = sorted(name for name in libs if name.startswith(WATCHED))
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"], "libs": len(libs), "watched": watched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--history-days", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as files, tempfile.TemporaryDirectory() as page:
        plain = measure(with_history(Path(files), args.history_days), 0, args.seconds)
        served = measure(with_history(Path(page), args.history_days), free_port(), args.seconds)
        results = [("files only", plain), ("with http:", served)]
        if args.history_days:
            results.append(("restarted", measure(Path(page), free_port(), args.seconds)))
    if args.history_days:
        print(f"beside {args.history_days} days of closed hours and their summaries "
              "(with http: the energy counted from them; restarted: from energy.json):")
    for label, figures in results:
        print(f"{label:11} VmRSS {figures['rss']:>10}  VmHWM {figures['peak']:>10}  "
              f"shared objects {figures['libs']:3}  of note: {', '.join(figures['watched']) or 'none'}")


if __name__ == "__main__":
    main()
