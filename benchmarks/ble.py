"""What the BLE bridge costs, and whether silent meters slow a talking one.

Run: .venv/bin/python benchmarks/ble.py [--seconds 5] [--silent 8]

A real MeterSession polls the simulated RS-BTWATTCH2 flat out over:
  socketpair  the embedded simulator's link (sim://, model btwattch2): bytes as written
  BLE bridge  BleOpener over the tests' stand-in bleak client: each answer split into
              20-byte notifications, through the meter's asyncio loop thread
  + silent    the same, while N other BLE meters are open, each polled by its own
              thread and never answering (re-subscribe, close, reconnect, again)
Prints polls/s and CPU per poll (the machine's other load moves the wall-clock
rates; the CPU figures less); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_ble import Radio  # noqa: E402  (the stand-in bleak client lives with the tests)
from wattchecker_client.ble import BleOpener  # noqa: E402
from wattchecker_client.clock import Clock  # noqa: E402
from wattchecker_client.meter import MeterSession, link_opener  # noqa: E402
from wattchecker_client.simulator import SimOptions, SimulatedMeter  # noqa: E402
from wattchecker_client.transport import LinkError  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--silent", type=int, default=8)
    args = parser.parse_args()

    plain, plain_cpu = polls_per_second(link_opener("sim://?model=btwattch2", model="btwattch2", timeout=2.0), args.seconds)

    meter = SimulatedMeter(SimOptions(model="btwattch2"), Clock())
    radio = Radio(respond=meter.respond)
    talking = BleOpener("F0:12:34:56:78:9A", 2.0, client_factory=radio.factory)
    bridged, bridged_cpu = polls_per_second(talking, args.seconds)

    stop = threading.Event()
    silent = []
    for n in range(args.silent):
        quiet = Radio(respond=lambda payload: b"")  # connects, never answers
        opener = BleOpener(f"F0:12:34:56:79:{n:02X}", 2.0, client_factory=quiet.factory, silence_timeout=0.1)
        silent.append((opener, quiet))
        threading.Thread(target=keep_asking, args=(opener, stop), daemon=True).start()
    time.sleep(0.5)
    crowded, _ = polls_per_second(talking, args.seconds)
    stop.set()
    time.sleep(0.5)
    reconnects = sum(len(quiet.clients) for _, quiet in silent)
    for opener, _ in silent + [(talking, None)]:
        opener.close()

    print(f"socketpair (embedded simulator):    {plain:7,.0f} polls/s, {plain_cpu:5,.0f} us CPU per poll")
    print(f"BLE bridge (20-byte notifications): {bridged:7,.0f} polls/s, {bridged_cpu:5,.0f} us CPU per poll "
          f"({bridged_cpu / plain_cpu:.2f}x the CPU)")
    print(f"BLE bridge beside {args.silent} silent meters:  {crowded:7,.0f} polls/s "
          f"({crowded / bridged:.2f}x of alone; the silent ones connected {reconnects} times)")
    print(f"one meter at 1 Hz over BLE: {bridged_cpu / 1e4:.3f} % of a core")

if __name__ == "__main__":
    main()
