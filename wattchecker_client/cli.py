"""Command line: `wattchecker-client COMMAND ...`; each command lives in ``commands/``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, List, Optional

from . import __version__
from .commands import check_config, demo, read, report, run, scan, simulate, switch, upload
from .commands.common import EXIT_OK, EXIT_SETUP
from .config import ConfigError
from .errors import SetupError

COMMANDS = (read, simulate, run, demo, check_config, upload, report, switch, scan)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def terminal_width() -> int:
    """What ``shutil.get_terminal_size()`` answers, without importing shutil."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, given the width: its own lookup imports shutil, bz2 and lzma (0.4 MB) into every process."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or terminal_width() - 2)


class Parser(argparse.ArgumentParser):
    """The parser of every command; ``on_use`` adds arguments whose imports only that command needs."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.on_use: List[Callable[[argparse.ArgumentParser], None]] = []

    def parse_known_args(self, args=None, namespace=None):
        while self.on_use:
            self.on_use.pop(0)(self)
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
