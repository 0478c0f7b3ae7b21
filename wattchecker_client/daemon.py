"""The long-running service: reader threads -> queue -> writer thread, under systemd's watch.

Threads share nothing but queues and stop events. The main thread only
supervises: it pings the watchdog while every thread shows signs of life,
logs a status line now and then, and shuts everything down in order.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys
import threading
from typing import Callable, Dict, List, Mapping, Optional

from .clock import Clock
from .config import Config, DeviceConfig
from .meter import MeterReader
from .notify import Notifier
from .protocol import Measurement
from .transport import RfcommFactory, SetupError
from .uploader import BigQueryTarget, Uploader, check_setup as check_bigquery
from .writer import ClosedFile, Writer

log = logging.getLogger(__name__)

ROW_QUEUE_SIZE = 10_000
JOIN_TIMEOUT = 15.0
EXIT_OK = 0
EXIT_FAILED = 1

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
        path = general.data_dir / general.log_file
        file_handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=general.log_max_bytes, backupCount=general.log_backup_count, encoding="utf-8"
        )
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(file_handler)
    logging.raiseExceptions = False  # a full disk must not turn logging into crashes


def preflight(config: Config) -> List[str]:
    """Every check start-up makes before it starts anything; ``check-config`` runs the same.

    One function for both, so a config that passes check-config cannot stop
    the service. Each configured output adds its own ``check_setup`` (its
    libraries, its key files): SetupError where start-up stops, warnings
    returned. It creates nothing and connects nowhere.
    """
    warnings: List[str] = []
    if config.bigquery is not None:
        warnings += check_bigquery(config.bigquery)
    data_dir = config.general.data_dir
    if not data_dir.exists():
        warnings.append(
            f"general.data_dir: {data_dir} does not exist: start-up creates it, or exits 1 "
            "(systemd retries) when it cannot, as when its disk is not mounted yet"
        )
    elif not data_dir.is_dir():
        warnings.append(f"general.data_dir: {data_dir} is not a folder: start-up will exit 1")
    return warnings


class Heartbeats:
    """The last sign of life from each thread; the watchdog is fed only while all are fresh."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._last: Dict[str, float] = {}
        self._lock = threading.Lock()

    def beater(self, name: str) -> Callable[[], None]:
        self.beat(name)
        return lambda: self.beat(name)

    def beat(self, name: str) -> None:
        with self._lock:
            self._last[name] = self.clock.monotonic()

    def stale(self, limit: float) -> List[str]:
        now = self.clock.monotonic()
        with self._lock:
            return sorted(name for name, last in self._last.items() if now - last > limit)


class Daemon:
    """Wires readers, writer, watchdog and status for one configuration."""

    def __init__(
        self,
        config: Config,
        clock: Optional[Clock] = None,
        *,
        rfcomm_factory: Optional[RfcommFactory] = None,
        environ: Mapping[str, str] = os.environ,
        echo: Optional[Callable[[str, Measurement], None]] = None,
    ) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.rfcomm_factory = rfcomm_factory
        self.echo = echo
        self.notifier = Notifier(environ)
        self.stop = threading.Event()
        self.rows: "queue.Queue" = queue.Queue(ROW_QUEUE_SIZE)
        self.closed_files: "queue.Queue[ClosedFile]" = queue.Queue()
        self.heartbeats = Heartbeats(self.clock)
        self.failure: Optional[str] = None
        general = config.general
        self.writer = Writer(
            general.data_dir,
            {d.name: config.file_stem(d) for d in config.devices},
            general.data_format,
            self.clock,
            buffer_seconds=general.data_buffer_size,
            grace=general.hour_close_grace,
            max_buffered_rows=general.max_buffered_rows,
            closed_files=self.closed_files,
        )
        target = BigQueryTarget(config.bigquery, config.named_files) if config.bigquery else None
        self.uploader = Uploader(
            general.data_dir,
            target,
            self.clock,
            max_backoff=config.bigquery.max_backoff if config.bigquery else 3600.0,
            retention_days=general.retention_days,
        )
        self.readers: Dict[str, MeterReader] = {}
        self._threads: List[threading.Thread] = []
        self._stuck_logged = False

    # --- threads ----------------------------------------------------------------

    def _reader_for(self, device: DeviceConfig) -> MeterReader:
        return MeterReader(
            device.address,
            self.clock,
            self.stop,
            channel=device.channel,
            model=device.model,
            poll_interval=self.config.general.poll_interval,
            start_argument=device.start_argument,
            timeout=device.timeout,
            rfcomm_factory=self.rfcomm_factory,
            name=device.name,
            last_time=self.writer.last_time(device.name),
            heartbeat=self.heartbeats.beater(f"reader {device.name}"),
        )

    def _read_meter(self, name: str, reader: MeterReader) -> None:
        try:
            for measurement in reader.readings():
                self.rows.put((name, measurement))
                if self.echo is not None:
                    self.echo(name, measurement)
        except SetupError as exc:
            self._fail(f"{name}: {exc}")
        except Exception:
            log.exception("%s: reader failed", name)
            self._fail(f"{name}: reader failed unexpectedly")

    def _write(self, writer_stop: threading.Event) -> None:
        try:
            self.writer.run(self.rows, writer_stop, self.heartbeats.beater("writer"))
        except Exception:
            log.exception("writer failed")
            self._fail("writer failed unexpectedly")

    def _upload(self, uploader_stop: threading.Event) -> None:
        try:
            self.uploader.run(self.closed_files, uploader_stop)
        except Exception:
            log.exception("uploader failed; closed files stay queued for the next start")

    def _fail(self, why: str) -> None:
        log.error("%s; stopping", why)
        self.failure = self.failure or why
        self.stop.set()

    def _start(self, name: str, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    # --- the main thread ------------------------------------------------------------

    def run(self) -> int:
        """Run until ``stop`` is set; 0 after a clean stop, 1 after a failure."""
        general = self.config.general
        self.writer.recover()
        writer_stop, uploader_stop = threading.Event(), threading.Event()
        writer_thread = self._start("writer", self._write, writer_stop)
        uploader_thread = self._start("uploader", self._upload, uploader_stop)
        for device in self.config.devices:
            reader = self.readers[device.name] = self._reader_for(device)
            self._threads.append(self._start(f"reader {device.name}", self._read_meter, device.name, reader))
        names = ", ".join(f"{d.name} at {d.address}" for d in self.config.devices)
        log.info("running: %s; data in %s", names, general.data_dir)
        self.notifier.ready(f"reading {names}")
        next_status = self.clock.monotonic() + general.status_interval
        tick = min(1.0, self.notifier.watchdog_interval or 1.0)
        while not self.clock.sleep(tick, self.stop):
            self._feed_watchdog(writer_thread)
            if self.clock.monotonic() >= next_status:
                next_status = self.clock.monotonic() + general.status_interval
                self._report()
        self.notifier.stopping("stopping: flushing buffered rows")
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT)
        writer_stop.set()
        writer_thread.join(JOIN_TIMEOUT + general.data_buffer_size)
        uploader_stop.set()
        uploader_thread.join(JOIN_TIMEOUT)
        if uploader_thread.is_alive():
            log.warning("an upload is still in flight; it stays queued and is resolved at the next start")
        self._report(final=True)
        self.notifier.close()
        return EXIT_FAILED if self.failure else EXIT_OK

    def _feed_watchdog(self, writer_thread: threading.Thread) -> None:
        """Ping only while the writer and every reader are alive and recently active."""
        dead = [t.name for t in self._threads + [writer_thread] if not t.is_alive()]
        stuck = dead + self.heartbeats.stale(self.config.general.watchdog_stall)
        if not stuck:
            self.notifier.watchdog()
            self._stuck_logged = False
        elif not self._stuck_logged:
            self._stuck_logged = True
            log.error("no sign of life from %s for %g s: not feeding the watchdog",
                      ", ".join(stuck), self.config.general.watchdog_stall)

    def _report(self, final: bool = False) -> None:
        for name, reader in self.readers.items():
            s = reader.stats
            log.info(
                "%s%s: readings=%d duplicates=%d stale_seconds=%d gaps=%d missing_seconds=%d "
                "crc_errors=%d rejected=%d stray_frames=%d retries=%d timeouts=%d reconnects=%d "
                "link_errors=%d clock_resets=%d",
                "final status " if final else "status ", name, s.readings, s.duplicates, s.stale_seconds,
                s.gaps, s.missing_seconds, s.crc_errors, s.rejected, s.stray_frames, s.retries, s.timeouts,
                max(0, s.connects - 1), s.link_errors, s.clock_resets,
            )
        w = self.writer.stats
        written = " ".join(f"{k}={v}" for k, v in sorted(self.writer.counts().items()))
        log.info(
            "%swriter: rows_received=%d written: %s buffered=%d files_closed=%d write_errors=%d rows_dropped=%d",
            "final status " if final else "status ", w.rows_received, written, self.writer.pending_rows(),
            w.files_closed, w.write_errors, w.rows_dropped,
        )
        if self.config.bigquery:
            u = self.uploader.stats
            log.info("%suploader: uploaded=%d rows=%d queued=%d failed=%d retries=%d deleted=%d",
                     "final status " if final else "status ", u.uploaded, u.rows, self.uploader.pending,
                     u.failed, u.retries, u.deleted)
        total = sum(r.stats.readings for r in self.readers.values())
        self.notifier.status(f"{total} readings, {w.files_closed} hours closed, {self.writer.pending_rows()} buffered")
