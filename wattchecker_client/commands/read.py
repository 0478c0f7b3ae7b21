"""`read ADDRESS`: print live readings from one meter, reconnecting by itself."""

from __future__ import annotations

import argparse
import logging

from ..clock import Clock
from ..errors import SetupError
from ..formats import FORMATTERS
from ..meter import MeterReader, ReaderSettings
from ..protocol import DEFAULT_MODEL, MODELS
from ..transport import DEFAULT_TIMEOUT
from .common import EXIT_OK, byte_value, on_stop_signals, positive_float

log = logging.getLogger("wattchecker_client")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("read", help="print live readings from a meter")
    p.add_argument("address", help="MAC (00:0C:BF:..), tty path (/dev/rfcomm0), tcp://HOST:PORT or sim://")
    p.add_argument("--model", choices=MODELS, default=DEFAULT_MODEL,
                   help="btwattch1 (REX-BTWATTCH1, the default) or btwattch2 (RS-BTWATTCH2, Bluetooth LE)")
    p.add_argument("--channel", type=int, help="btwattch1: RFCOMM channel (default: look it up over SDP, else try 1-30)")
    p.add_argument("--count", type=int, default=0, help="stop after this many readings (0: until Ctrl-C)")
    p.add_argument("--format", choices=sorted(FORMATTERS), default="json", help="row format (default json)")
    p.add_argument("--interval", type=positive_float, default=1.0, help="seconds between polls (default 1)")
    p.add_argument("--start-argument", type=byte_value, default=0, help="argument of the start command (default 0x00)")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, help="link timeout in seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import threading

    if args.channel is not None and args.model != DEFAULT_MODEL:
        raise SetupError("--channel only applies to a btwattch1 (RFCOMM); an RS-BTWATTCH2 is reached over "
                         "Bluetooth LE by its MAC")
    stop = threading.Event()
    on_stop_signals(stop)
    settings = ReaderSettings(args.address, model=args.model, channel=args.channel, start_argument=args.start_argument,
                              timeout=args.timeout, poll_interval=args.interval,
                              backoff=(min(1.0, args.interval * 2), 60.0))
    reader = MeterReader(settings, Clock(), stop)
    formatter = FORMATTERS[args.format]
    printed = 0
    for measurement in reader.readings():
        print(formatter(measurement), flush=True)
        printed += 1
        if args.count and printed >= args.count:
            break
    log.info("%d readings printed; %s", printed, reader.stats.summary())
    return EXIT_OK
