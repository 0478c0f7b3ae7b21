"""What a flood of relay commands costs: switches that reach the meter, and the reading it delays.

Run: .venv/bin/python benchmarks/relay.py [--commands 200] [--poll 1]

A MeterReader in this process reads a simulated RS-BTWATTCH2 (1x clock) over
a real TCP socket, polling every ``--poll`` seconds. Once readings flow,
``--commands`` alternating ON/OFF requests arrive from another thread as fast
as it can make them (a stand-in for a flood on the MQTT command topic), ending
with OFF. Figures: commands per second asked, relay writes that reached the
meter (the simulator counts them), the state it ends in, and the longest gap
between two readings during the flood against the poll interval, as a ratio.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import threading
import time

from wattchecker_client.clock import Clock
from wattchecker_client.meter import MeterReader, ReaderSettings
from wattchecker_client.simulator import SimOptions, SimulatedMeter, TcpServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--poll", type=float, default=1.0, help="poll interval; 1 s: each poll a new meter second")
    parser.add_argument("--after", type=float, default=5.0, help="seconds to keep reading after the flood")
    args = parser.parse_args()

    meter = SimulatedMeter(SimOptions(model="btwattch2", seed=3), Clock())
    server = TcpServer(meter)
    server.start()
    stop = threading.Event()
    reader = MeterReader(ReaderSettings(server.address, model="btwattch2", poll_interval=args.poll), Clock(), stop)
    arrivals = []
    thread = threading.Thread(target=lambda: [arrivals.append(time.monotonic()) for _ in reader.readings()],
                              daemon=True)
    thread.start()
    while len(arrivals) < 3:
        time.sleep(0.05)

    started = time.monotonic()
    for i in range(args.commands):
        reader.request_relay((args.commands - i) % 2 == 0)  # the last one OFF
    asked_for = time.monotonic() - started
    time.sleep(args.after)
    stop.set()
    thread.join(10)
    server.close()

    during = [t for t in arrivals if t >= started]
    gaps = [b - a for a, b in zip(during, during[1:])]
    print(f"{args.commands} commands asked in {asked_for * 1000:.1f} ms "
          f"({args.commands / max(asked_for, 1e-9):,.0f} per second), the last one OFF")
    print(f"relay writes that reached the meter: {len(meter.relay_writes)} "
          f"({' '.join(w.hex() for w in meter.relay_writes)}); relay ends {'on' if meter.relay else 'off'}")
    longest = max(gaps) if gaps else float("nan")
    print(f"readings during and after the flood: {len(during)}; longest gap {longest:.3f} s "
          f"= {longest / args.poll:.2f} x the poll interval ({args.poll:g} s)")


if __name__ == "__main__":
    main()
