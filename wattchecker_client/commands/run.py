"""`run --config FILE`: the service itself, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
from typing import Callable, Optional

from ..config import Config, load_config
from ..formats import json_line
from ..protocol import Measurement
from .common import EXIT_FAILED, on_stop_signals

log = logging.getLogger("wattchecker_client")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the service: read meters, write hourly files")
    p.add_argument("--config", required=True, help="path to config.yaml")
    p.add_argument("--echo", action="store_true", help="also print each reading to standard output")
    p.set_defaults(func=run)


def serve(config: Config, echo: Optional[Callable[[str, Measurement], None]] = None) -> int:
    """Run the daemon until SIGTERM or SIGINT."""
    from ..daemon import Daemon, preflight
    from ..logs import configure_logging

    # SetupError here stops start-up (exit 2) before anything is created. Its
    # warnings are check-config's to print: the modules log their own as they start.
    preflight(config)
    configure_logging(config)
    daemon = Daemon(config, echo=echo)
    on_stop_signals(daemon.stop)
    try:
        return daemon.run()
    except OSError as exc:  # the data folder cannot even be created: maybe not mounted yet
        log.error("cannot use the data folder %s: %s", config.general.data_dir, exc.strerror or exc)
        return EXIT_FAILED


def print_row(name: str, measurement: Measurement) -> None:
    print(json_line(measurement), flush=True)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    return serve(config, echo=print_row if args.echo else None)
