"""What the BLE link costs and captures, through the real bleak and D-Bus, and whether silent meters slow a talking one.

Run: .venv/bin/python benchmarks/ble.py [--seconds 60] [--poll-interval 1] [--mtu 247]
                                         [--reply-first | --no-reply-first] [--bridge-seconds 5] [--silent 8]

1. wall clock  the real `run` process and the real bleak, against the tests' stand-in BlueZ
               (tests/bluez.py) on a private dbus-daemon, behaving as a Pi's does: MTU 247,
               answers that reach bleak before the write's reply, a bonded meter. Rows written
               are counted over --seconds of the wall clock (not over the seconds the stand-in
               answered), with the daemon's CPU time over the same span (/proc/PID/stat).
2. bridge      a MeterSession polling flat out, over the embedded simulator's socketpair and
               over BleOpener with the tests' injected bleak client (tests/test_ble.py's Radio):
               the bridge's own cost, without D-Bus; then beside N silent BLE meters, each
               polled by its own thread and never answering (re-subscribe, close, reconnect).
Prints figures; asserts nothing. The machine's other load moves the wall-clock rates, the CPU less.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.bluez import DEFAULT_MTU, PI_MTU, PiBehaviour, stand_in_bluez  # noqa: E402
from tests.conftest import DaemonProcess, count_between_writes, wait_for  # noqa: E402
from tests.test_ble import Radio  # noqa: E402  (the injected bleak client lives with the tests)
from wattchecker_client.ble import BleOpener  # noqa: E402
from wattchecker_client.clock import Clock  # noqa: E402
from wattchecker_client.meter import MeterSession, link_opener  # noqa: E402
from wattchecker_client.simulator import SimOptions, SimulatedMeter  # noqa: E402
from wattchecker_client.transport import LinkError  # noqa: E402

MAC = "F0:12:34:56:78:9A"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def json_rows(data_dir: Path) -> int:
    current = data_dir / "wattchecker-data-plug.json"
    return len(current.read_text().splitlines()) if current.exists() else 0


def wall_clock(seconds: float, poll_interval: float, pi: PiBehaviour) -> None:
    """`run` through the stand-in BlueZ: rows captured per second of the wall clock, and CPU per hour."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        config = tmp / "config.yaml"
        config.write_text(
            f"general:\n  data_dir: {tmp / 'data'}\n  data_buffer_size: 1\n  data_format: [json]\n"
            f"  poll_interval: {poll_interval}\n  status_interval: 3600\n"
            f"devices:\n  - name: plug\n    address: '{MAC}'\n    model: btwattch2\n"
        )
        meter = SimulatedMeter(SimOptions(model="btwattch2", seed=3), Clock())
        with stand_in_bluez(tmp, MAC, meter, pi) as bluez:
            daemon = DaemonProcess(config, tmp, env={"DBUS_SYSTEM_BUS_ADDRESS": bluez.address})
            try:
                wait_for(lambda: json_rows(tmp / "data") >= 2, timeout=60, what="the first rows")
                rows = count_between_writes(lambda: json_rows(tmp / "data"), poll_interval)
                cpu, start = cpu_seconds(daemon.proc.pid), time.monotonic()
                Clock().sleep(seconds)
                elapsed = time.monotonic() - start
                rows, cpu = json_rows(tmp / "data") - rows, cpu_seconds(daemon.proc.pid) - cpu
            finally:
                daemon.stop()
            log = daemon.stderr()
    expected = elapsed / poll_interval
    behaviour = (f"MTU {pi.mtu}, answers {'before' if pi.notify_before_reply else 'with'} the write's reply"
                 f"{', bonded' if pi.bonded else ''}")
    print(f"wall clock through the stand-in BlueZ ({behaviour}), poll_interval {poll_interval:g} s:")
    print(f"  {rows} rows in {elapsed:.1f} s of the wall clock: {rows / expected:.1%} of the polls due "
          f"({rows}/{expected:.0f})")
    print(f"  re-subscribes {log.count(' re-subscribing')}, warnings {log.count(' WARNING ')}, "
          f"connects {bluez.connects}, notifications {len(bluez.notified)}")
    for line in log.splitlines():
        if " WARNING " in line:
            print("  warning:", line.split(" WARNING ", 1)[1])
    print(f"  daemon CPU {cpu:.2f} s: {cpu / elapsed * 3600:.0f} s per hour ({cpu / elapsed:.2%} of a core)")


def polls_per_second(open_link, seconds: float) -> tuple:
    """(polls per second of wall time, CPU microseconds per poll, all of this process's threads)."""
    with open_link() as link:
        session = MeterSession(link, Clock(), model="btwattch2")
        polls = 0
        cpu = time.process_time()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            session.poll()
            polls += 1
        cpu = time.process_time() - cpu
    return polls / seconds, cpu / polls * 1e6


def keep_asking(opener: BleOpener, stop: threading.Event) -> None:
    """A reader stuck on a silent meter: ask again and again; when the bridge gives up, back off, reconnect."""
    while not stop.is_set():
        try:
            with opener() as link:
                session = MeterSession(link, Clock(), model="btwattch2", response_timeout=0.2, retries=1000)
                session.poll()
        except LinkError:
            stop.wait(0.5)  # the reader's shortest backoff


def bridge(seconds: float, silent_meters: int) -> None:
    """The bridge's own cost over the injected client, alone and beside silent meters."""
    plain, plain_cpu = polls_per_second(link_opener("sim://?model=btwattch2", model="btwattch2", timeout=2.0), seconds)

    meter = SimulatedMeter(SimOptions(model="btwattch2"), Clock())
    radio = Radio(respond=meter.respond)
    talking = BleOpener("F0:12:34:56:78:9A", 2.0, client_factory=radio.factory)
    bridged, bridged_cpu = polls_per_second(talking, seconds)

    stop = threading.Event()
    silent = []
    for n in range(silent_meters):
        quiet = Radio(respond=lambda payload: b"")  # connects, never answers
        opener = BleOpener(f"F0:12:34:56:79:{n:02X}", 2.0, client_factory=quiet.factory, silence_timeout=0.1)
        silent.append((opener, quiet))
        threading.Thread(target=keep_asking, args=(opener, stop), daemon=True).start()
    time.sleep(0.5)
    crowded, _ = polls_per_second(talking, seconds)
    stop.set()
    time.sleep(0.5)
    reconnects = sum(len(quiet.clients) for _, quiet in silent)
    for opener, _ in silent + [(talking, None)]:
        opener.close()

    print(f"socketpair (embedded simulator):    {plain:7,.0f} polls/s, {plain_cpu:5,.0f} us CPU per poll")
    print(f"BLE bridge (20-byte notifications): {bridged:7,.0f} polls/s, {bridged_cpu:5,.0f} us CPU per poll "
          f"({bridged_cpu / plain_cpu:.2f}x the CPU)")
    print(f"BLE bridge beside {silent_meters} silent meters:  {crowded:7,.0f} polls/s "
          f"({crowded / bridged:.2f}x of alone; the silent ones connected {reconnects} times)")
    print(f"one meter at 1 Hz over the bridge alone: {bridged_cpu / 1e4:.3f} % of a core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall-clock seconds of `run` (0: skip)")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--mtu", type=int, default=PI_MTU, help=f"{PI_MTU} (a Pi) or {DEFAULT_MTU}")
    parser.add_argument("--reply-first", dest="before", action="store_false",
                        help="the write's reply as soon as the answer is sent (default: answers well before it)")
    parser.add_argument("--bridge-seconds", type=float, default=5.0, help="seconds per bridge figure (0: skip)")
    parser.add_argument("--silent", type=int, default=8)
    args = parser.parse_args()
    if args.seconds:
        wall_clock(args.seconds, args.poll_interval, PiBehaviour(mtu=args.mtu, notify_before_reply=args.before,
                                                                 bonded=True))
    if args.bridge_seconds:
        bridge(args.bridge_seconds, args.silent)


if __name__ == "__main__":
    main()
