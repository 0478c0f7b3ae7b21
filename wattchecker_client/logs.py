"""Where the service's log goes: stderr (journald-friendly under systemd) and a size-rotated file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Mapping

from .config import Config
from .datadir import private_file

# syslog priorities, which journald reads from a "<N>" line prefix
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<6>name: message``: journald adds the time and keeps the level."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{PRIORITY.get(record.levelno, 6)}>{record.name}: {record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else ""
        )


def configure_logging(config: Config, environ: Mapping[str, str] = os.environ) -> None:
    """stderr (journald-friendly under systemd) and a size-rotated file in the data dir."""
    general = config.general
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(general.log_level)
    stderr = logging.StreamHandler(sys.stderr)
    if environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"):
        stderr.setFormatter(JournalFormatter())
    else:
        stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(stderr)
    if general.log_file:
        general.data_dir.mkdir(parents=True, exist_ok=True)
        file_handler = SizeRotatedFile(general.data_dir / general.log_file, general.log_max_bytes,
                                       general.log_backup_count)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(file_handler)
    logging.raiseExceptions = False  # a full disk must not turn logging into crashes


class SizeRotatedFile(logging.FileHandler):
    """A log file kept under ``max_bytes``: ``NAME``, then ``NAME.1`` ... ``NAME.<backups>``, oldest last.

    What logging.handlers.RotatingFileHandler does, without importing that
    module and pickle with it: 0.25 MB of the 20 MB the service may use on a Pi.
    With no backups the file is never cut, as with RotatingFileHandler.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, encoding="utf-8")
        self.max_bytes = max_bytes
        self.backups = backups

    def _open(self):
        """Created 0640 like the data files: the log names the meters and the broker."""
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors, opener=private_file)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.backups and self.stream is not None and (
                self.stream.tell() + len(self.format(record).encode("utf-8")) + 1 > self.max_bytes
            ):
                self._rotate()
        except (OSError, ValueError):
            self.handleError(record)
            return
        super().emit(record)

    def _rotate(self) -> None:
        self.stream.close()
        self.stream = None  # reopened by FileHandler.emit, even if a rename below fails
        for n in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{self.baseFilename}.{n}"):
                os.replace(f"{self.baseFilename}.{n}", f"{self.baseFilename}.{n + 1}")
        os.replace(self.baseFilename, f"{self.baseFilename}.1")
