"""Command line: `wattchecker-client COMMAND ...`; each command lives in ``commands/``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, List, Optional

from . import __version__
from .commands import check_config, demo, read, report, run, scan, simulate, switch, upload
from .commands.common import EXIT_OK, EXIT_SETUP
from .config import ConfigError
from .transport import SetupError

COMMANDS = (read, simulate, run, demo, check_config, upload, report, switch, scan)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattchecker-client",
        description="Read RATOC Bluetooth power meters: the REX-BTWATTCH1 and the RS-BTWATTCH2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (SetupError, ConfigError) as exc:
        print(f"wattchecker-client: error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return EXIT_OK
