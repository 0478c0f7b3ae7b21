"""What MQTT costs at 1 Hz, and how soon a reading reaches a subscriber.

Run: .venv/bin/python benchmarks/mqtt.py [--seconds 30]

Two `run` processes at the same time, each against its own `simulate` process
at 1x over TCP on 127.0.0.1, same formats (csv, json) and buffer (180 s): one
without an mqtt: section, one publishing every reading (publish_interval: 1)
to a Mosquitto started here on a free loopback port, with discovery. Figures:
CPU seconds per hour of sampling and peak RSS of each, and the latency from a
reading to its state message at a subscriber in this process.

Latency: the reader polls on the wall-clock second and the simulated meter's
clock is set from the host's, so a state stamped second S was asked for at S
(plus the poll's own round trip); latency = arrival at the subscriber - S. It
includes the meter's answer, the hand-over to the publisher, and the broker.
Prints figures; asserts nothing. Needs mosquitto (Debian package mosquitto).
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import importlib.util
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

import paho.mqtt.client as mqtt
MOSQUITTO = "/usr/sbin/mosquitto"


def load_daemon_benchmark():
    """benchmarks/daemon.py's process sampling, shared rather than copied."""
    spec = importlib.util.spec_from_file_location("daemon_benchmark", Path(__file__).resolve().parent / "daemon.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_daemon_benchmark()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(workdir: Path) -> "tuple[subprocess.Popen, int]":
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return broker, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def start_client(workdir: Path, address: str, tag: str, mqtt_port: int = 0):
    """A `run` process; with ``mqtt_port``, publishing every reading there."""
    data_dir = workdir / f"data-{tag}"
    config = workdir / f"config-{tag}.yaml"
    text = (f"general:\n  data_dir: {json.dumps(str(data_dir))}\n  data_format: [csv, json]\n"
            f"  poll_interval: 1\n  data_buffer_size: 180\ndevice:\n  address: {json.dumps(address)}\n")
    if mqtt_port:
        text += f"mqtt:\n  host: 127.0.0.1\n  port: {mqtt_port}\n  publish_interval: 1\n"
    config.write_text(text)
    err = workdir / f"daemon-{tag}.err"
    with open(err, "w") as f:
        process = subprocess.Popen(bench.CLI + ["run", "--config", str(config)], stderr=f)

    def rows() -> int:
        found = re.findall(r"final status writer: rows_received=(\d+)", err.read_text())
        return int(found[-1]) if found else 0

    return bench.Client(tag, process, lambda: "running:" in err.read_text(), signal.SIGTERM, rows)


class Latencies:
    """Arrival minus meter stamp of every state message."""

    def __init__(self, port: int) -> None:
        self.values: List[float] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="benchmark-subscriber")
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("wattchecker/+/state")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        arrived = time.time()
        stamp = dt.datetime.strptime(json.loads(message.payload)["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
        with self.lock:
            self.values.append(arrived - calendar.timegm(stamp.timetuple()))

    def close(self) -> List[float]:
        self.client.loop_stop()
        self.client.disconnect()
        return self.values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the measured window")
    args = parser.parse_args()
    if not Path(MOSQUITTO).exists():
        raise SystemExit("needs mosquitto (Debian package mosquitto)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker, port = start_broker(workdir)
        latencies = Latencies(port)
        simulators, clients = [], []
        try:
            for tag, mqtt_port in (("without MQTT", 0), ("MQTT every reading", port)):
                sim, address = bench.start_simulator(1.0)
                simulators.append(sim)
                clients.append(start_client(workdir, address, tag.replace(" ", "-"), mqtt_port))
                clients[-1].label = tag
            bench.measure(clients, args.seconds)
        finally:
            bench.stop(clients, simulators)
            values = latencies.close()
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)
    results = [c.figures() for c in clients]
    width = 22
    print(f"1 Hz, {results[0]['elapsed']:.0f} s, run at the same time:".ljust(40)
          + "".join(c.label.rjust(width) for c in clients))
    for title, cell in (
        ("CPU seconds per hour of sampling", lambda r: f"{r['cpu_per_hour']:.2f}"),
        ("peak RSS, MiB", lambda r: f"{r['rss']:.1f}"),
        ("seconds captured per second", lambda r: f"{r['captured_per_second']:.2f}"),
    ):
        print(f"  {title}".ljust(40) + "".join(cell(r).rjust(width) for r in results))
    plain, published = results
    print(f"  MQTT adds {published['cpu_per_hour'] - plain['cpu_per_hour']:+.2f} CPU s/hour "
          f"({published['cpu_per_hour'] / plain['cpu_per_hour']:.2f}x) and "
          f"{published['rss'] - plain['rss']:+.1f} MiB peak RSS")
    if values:
        print(f"  reading -> state message at a subscriber, {len(values)} messages: "
              f"median {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms")
    else:
        print("  no state message arrived")


if __name__ == "__main__":
    sys.exit(main())
