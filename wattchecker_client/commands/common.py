"""What several commands share: argument types, stop signals, exit codes."""

from __future__ import annotations

import argparse
import signal
import threading

from ..errors import EXIT_FAILED, EXIT_OK, EXIT_SETUP  # noqa: F401  (re-exported for the commands)


def byte_value(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 0xFF:
        raise argparse.ArgumentTypeError(f"{text} is not a byte (0..255 or 0x00..0xFF)")
    return value


def adapter_option(text: str) -> str:
    """--adapter hci1, checked as the config's ``adapter:`` is."""
    from ..config import adapter_name

    try:
        return adapter_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def iso_date(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-27") from None


def on_stop_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` so loops end cleanly instead of dying mid-write."""

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
