"""Command line: ``wattchecker-client read|simulate ...``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from typing import Callable, List, Optional

from . import __version__
from .clock import Clock
from .formats import FORMATTERS
from .meter import Backoff, MeterReader
from .transport import DEFAULT_TIMEOUT, SetupError

log = logging.getLogger("wattchecker_client")

EXIT_OK = 0
EXIT_SETUP = 2


def byte_value(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 0xFF:
        raise argparse.ArgumentTypeError(f"{text} is not a byte (0..255 or 0x00..0xFF)")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def on_stop_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` so loops end cleanly instead of dying mid-write."""

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# --- read ----------------------------------------------------------------------


def add_read(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("read", help="print live readings from a meter")
    p.add_argument("address", help="MAC (00:0C:BF:..), tty path (/dev/rfcomm0), tcp://HOST:PORT or sim://")
    p.add_argument("--channel", type=int, help="RFCOMM channel (default: look it up over SDP)")
    p.add_argument("--count", type=int, default=0, help="stop after this many readings (0: until Ctrl-C)")
    p.add_argument("--format", choices=sorted(FORMATTERS), default="json", help="row format (default json)")
    p.add_argument("--interval", type=positive_float, default=1.0, help="seconds between polls (default 1)")
    p.add_argument("--start-argument", type=byte_value, default=0, help="argument of the start command (default 0x00)")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, help="link timeout in seconds")
    p.set_defaults(func=cmd_read)


def cmd_read(args: argparse.Namespace) -> int:
    stop = threading.Event()
    on_stop_signals(stop)
    reader = MeterReader(
        args.address,
        Clock(),
        stop,
        channel=args.channel,
        poll_interval=args.interval,
        start_argument=args.start_argument,
        timeout=args.timeout,
        backoff=Backoff(initial=min(1.0, args.interval * 2)),
    )
    formatter = FORMATTERS[args.format]
    printed = 0
    for measurement in reader.readings():
        print(formatter(measurement), flush=True)
        printed += 1
        if args.count and printed >= args.count:
            break
    log.info("%d readings printed; %s", printed, reader.stats.summary())
    return EXIT_OK


# --- simulate -----------------------------------------------------------------


def add_simulate(sub: argparse._SubParsersAction) -> None:
    from .simulator import SimOptions

    p = sub.add_parser(
        "simulate",
        help="serve a simulated meter on TCP and/or a pty",
        description="Serve a simulated REX-BTWATTCH1 that speaks the real protocol. "
        "Prints one 'listening on ADDRESS' line per address.",
    )
    p.add_argument("--tcp", metavar="HOST:PORT", help="serve on TCP (default 127.0.0.1:0, a free port, without --pty)")
    p.add_argument("--pty", action="store_true", help="serve on a pseudo-terminal, like /dev/rfcommN")
    p.add_argument("--link", metavar="PATH", help="with --pty: keep a symlink to the current pty here")
    p.add_argument("--all-faults", action="store_true", help="turn every fault on at a moderate rate")
    for f in dataclasses.fields(SimOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=None, help=f.metadata["help"])
        else:
            kind = int if f.type == "int" else float
            p.add_argument(flag, type=kind, default=None, help=f"{f.metadata['help']} (default {f.default})")
    p.set_defaults(func=cmd_simulate)


ALL_FAULTS = {
    "corrupt_rate": 0.05,
    "junk_rate": 0.05,
    "stray_ack_rate": 0.05,
    "bad_status_rate": 0.02,
    "split_writes": True,
    "latency": 0.02,
    "drop_after": 50,
}


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulator import PtyServer, SimOptions, SimulatedMeter, TcpServer

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


# --- entry point ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattchecker-client",
        description="Read a RATOC REX-BTWATTCH1 Bluetooth power meter.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_read(sub)
    add_simulate(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SetupError as exc:
        print(f"wattchecker-client: error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return EXIT_OK
