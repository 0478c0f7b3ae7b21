"""The daemon against the simulated meter: seconds captured per second, CPU per hour, peak RSS.

Run: .venv/bin/python benchmarks/daemon.py [--seconds 30] [--flat-out-seconds 15]

Two runs of the real `wattchecker-client run` process against a real
`simulate` process over TCP on 127.0.0.1:
  real time  the meter at 1x, polled once a second, as on a Pi: CPU seconds per
             hour of sampling and peak RSS;
  flat out   the meter's clock at 2000x, polled as fast as the daemon can: how many
             meter seconds it captures per second of wall time (its headroom).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "wattchecker_client"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mib(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024


def run_once(speed: float, poll: float, seconds: float, workdir: Path) -> dict:
    sim = subprocess.Popen(CLI + ["simulate", "--clock-speed", str(speed)], stdout=subprocess.PIPE, text=True)
    address = sim.stdout.readline().split("listening on ", 1)[1].strip()
    data_dir = workdir / f"data-{speed:g}"
    config = workdir / f"config-{speed:g}.yaml"
    config.write_text(
        f"general:\n  data_dir: {json.dumps(str(data_dir))}\n  data_format: [csv, json]\n"
        f"  poll_interval: {poll}\n  data_buffer_size: 180\n"
        f"device:\n  address: {json.dumps(address)}\n"
    )
    err = open(workdir / f"daemon-{speed:g}.err", "w+")
    daemon = subprocess.Popen(CLI + ["run", "--config", str(config)], stderr=err)
    try:
        while "running:" not in Path(err.name).read_text():
            time.sleep(0.05)
        start, cpu_start = time.monotonic(), cpu_seconds(daemon.pid)
        time.sleep(seconds)
        cpu = cpu_seconds(daemon.pid) - cpu_start
        elapsed = time.monotonic() - start
        rss = peak_rss_mib(daemon.pid)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
    log = Path(err.name).read_text()
    rows = int(re.findall(r"final status writer: rows_received=(\d+)", log)[-1])
    return {"rows": rows, "elapsed": elapsed, "cpu": cpu, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the real-time run")
    parser.add_argument("--flat-out-seconds", type=float, default=15.0, help="length of the flat-out run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        real = run_once(1.0, 1.0, args.seconds, Path(tmp))
        fast = run_once(2000.0, 0.0005, args.flat_out_seconds, Path(tmp))
    print(f"real time ({real['elapsed']:.0f} s at 1 Hz): {real['rows']} seconds captured, "
          f"{real['rows'] / real['elapsed']:.2f} captured per second elapsed")
    print(f"  CPU: {real['cpu']:.2f} s in {real['elapsed']:.0f} s = "
          f"{real['cpu'] / real['elapsed'] * 3600:.1f} CPU seconds per hour of sampling "
          f"({real['cpu'] / real['elapsed']:.2%} of one core)")
    print(f"  peak RSS: {real['rss']:.1f} MiB")
    print(f"flat out ({fast['elapsed']:.0f} s, meter clock at 2000x): {fast['rows']} meter seconds captured, "
          f"{fast['rows'] / fast['elapsed']:.0f} per second elapsed; "
          f"{fast['cpu'] / fast['elapsed']:.2f} cores busy; peak RSS {fast['rss']:.1f} MiB")


if __name__ == "__main__":
    main()
