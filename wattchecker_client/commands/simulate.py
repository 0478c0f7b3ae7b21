"""`simulate`: serve a simulated meter on TCP and/or a pty, with fault injection."""

from __future__ import annotations

import argparse
import dataclasses
import threading
from typing import List

from ..clock import Clock
from ..errors import SetupError
from .common import EXIT_OK, on_stop_signals

ALL_FAULTS = {
    "corrupt_rate": 0.05,
    "junk_rate": 0.05,
    "stray_ack_rate": 0.05,
    "bad_status_rate": 0.02,
    "split_writes": True,
    "latency": 0.02,
    "drop_after": 50,
}


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="serve a simulated meter on TCP and/or a pty",
        description="Serve a simulated meter that speaks the real protocol: a REX-BTWATTCH1, or with "
        "--model btwattch2 an RS-BTWATTCH2 and its relay. Prints one 'listening on ADDRESS' line per address.",
    )
    p.add_argument("--tcp", metavar="HOST:PORT", help="serve on TCP (default 127.0.0.1:0, a free port, without --pty)")
    p.add_argument("--pty", action="store_true", help="serve on a pseudo-terminal, like /dev/rfcommN")
    p.add_argument("--link", metavar="PATH", help="with --pty: keep a symlink to the current pty here")
    p.add_argument("--all-faults", action="store_true", help="turn every fault on at a moderate rate")
    p.on_use.append(add_meter_options)  # the simulator is imported only when this command runs
    p.set_defaults(func=run)


def add_meter_options(p: argparse.ArgumentParser) -> None:
    """One flag per SimOptions field."""
    from ..simulator import SimOptions

    for f in dataclasses.fields(SimOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=None, help=f.metadata["help"])
        elif f.type == "str":
            p.add_argument(flag, choices=f.metadata["choices"], default=None,
                           help=f"{f.metadata['help']} (default {f.default})")
        else:
            kind = int if f.type == "int" else float
            p.add_argument(flag, type=kind, default=None, help=f"{f.metadata['help']} (default {f.default})")


def run(args: argparse.Namespace) -> int:
    from ..simulator import PtyServer, SimOptions, SimulatedMeter, TcpServer

    chosen = dict(ALL_FAULTS) if args.all_faults else {}
    for f in dataclasses.fields(SimOptions):
        value = getattr(args, f.name)
        if value is not None:
            chosen[f.name] = value
    try:
        options = SimOptions(**chosen)
    except ValueError as exc:
        raise SetupError(f"simulate: {exc}") from None
    meter = SimulatedMeter(options, Clock())
    servers: List = []
    if args.tcp or not args.pty:
        host, _, port = (args.tcp or "127.0.0.1:0").rpartition(":")
        servers.append(TcpServer(meter, host or "127.0.0.1", int(port)))
    if args.pty:
        servers.append(PtyServer(meter, args.link))
    stop = threading.Event()
    on_stop_signals(stop)
    for server in servers:
        server.start()
        print(f"listening on {server.address}", flush=True)
    stop.wait()
    for server in servers:
        server.close()
    return EXIT_OK
