"""What several commands share: argument types, stop signals, exit codes."""

from __future__ import annotations

import argparse
import os
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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_stop_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` so loops end cleanly instead of dying mid-write.

    The Python-level handler does nothing: ``stop.set()`` takes the lock that
    ``stop.wait()`` holds for a moment in this (the main) thread, and a signal
    handled in that moment waited for itself forever (a simulator or a service
    that ignored SIGTERM until killed). Instead the interpreter's C handler
    writes the signal's number to a pipe (``set_wakeup_fd``), and a thread
    reading it sets ``stop``. Call it from the main thread, once per process.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _noted_by_the_pipe)

    def watch() -> None:
        while True:
            if any(byte in STOP_SIGNALS for byte in os.read(read_fd, 64)):
                stop.set()

    threading.Thread(target=watch, name="stop-signals", daemon=True).start()


def _noted_by_the_pipe(signum: int, frame: object) -> None:
    """Installed so the signal does not kill the process; the wakeup pipe carries it."""
