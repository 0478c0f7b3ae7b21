"""The long-running service: reader threads -> queue -> writer thread, under systemd's watch.

Threads share nothing but queues and stop events. The main thread only
supervises: it pings the watchdog while every thread shows signs of life,
logs a status line now and then, and shuts everything down in order.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Callable, Dict, List, Mapping, Optional

from .clock import Clock
from .config import Config, DeviceConfig
from .errors import EXIT_FAILED, EXIT_OK, SetupError
from .identity import device_values
from .identity import for_config as identity_for
from .meter import MeterMemory, MeterReader, ReaderListener, ReaderSettings, links_for
from .notify import Notifier
from .protocol import Measurement, dialect
from .saved import CLOCK_FILE, RELAY_FILE, SavedMeters, saved_energy
from .transport import RfcommFactory, is_ble
from .writer import ClosedFile, Writer

# The upload package is imported only when BigQuery or retention is configured:
# with hashlib's OpenSSL the uploader costs about 4 MB of memory, a fifth of the service's.

log = logging.getLogger(__name__)

ROW_QUEUE_SIZE = 10_000
# The writer sleeps until its next flush; rows past this many wake it sooner (flat-out polling).
WAKE_WRITER_AT = ROW_QUEUE_SIZE // 10
JOIN_TIMEOUT = 15.0
M_ARENA_MAX = -8  # mallopt(3) parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept

def preflight(config: Config) -> List[str]:
    """Every check start-up makes before it starts anything; ``check-config`` runs the same.

    One function for both, so a config that passes check-config cannot stop
    the service. Each configured output adds its own ``check_setup`` (its
    libraries, its key files): SetupError where start-up stops, warnings
    returned. It creates nothing and connects nowhere. Errors name the
    config's file and line.
    """
    try:
        return _preflight(config)
    except SetupError as exc:
        raise config.located(exc) from None


def _preflight(config: Config) -> List[str]:
    warnings: List[str] = []
    if config.bigquery is not None:
        from .upload.bigquery import check_setup as check_bigquery

        warnings += check_bigquery(config.bigquery)
    if config.influxdb is not None:
        from .upload.influxdb import check_setup as check_influxdb

        warnings += check_influxdb(config.influxdb)
    if config.mqtt is not None:
        from .mqtt import check_setup as check_mqtt

        warnings += check_mqtt(config.mqtt)
    if config.http is not None:
        from .web import check_setup as check_http

        warnings += check_http(config.http)
    if any(is_ble(d.address, d.model) for d in config.devices):
        from .ble import check_setup as check_ble

        warnings += check_ble(config.devices)
    data_dir = config.general.data_dir
    if not data_dir.exists():
        warnings.append(
            f"general.data_dir: {data_dir} does not exist: start-up creates it, or exits 1 "
            "(systemd retries) when it cannot, as when its disk is not mounted yet"
        )
    elif not data_dir.is_dir():
        warnings.append(f"general.data_dir: {data_dir} is not a folder: start-up will exit 1")
    return warnings


def ble_client_factory(device: DeviceConfig) -> Optional[Callable[..., object]]:
    """bleak clients on the device's ``adapter: hci1``; None (BlueZ's default adapter) without one."""
    if device.adapter is None:
        return None  # no need to import asyncio and the BLE link here
    from .ble import client_on

    return client_on(device.adapter)


def one_malloc_arena() -> None:
    """Have glibc's malloc keep one arena for all threads, as MALLOC_ARENA_MAX=1 would.

    By default each thread gets an arena of its own; this service's threads
    allocate little and rarely at once, and sharing one saves about 0.3 MB
    (measured) of the 20 MB it may use on a Pi. ctypes is loaded anyway (the
    clock's adjtimex). Other C libraries: nothing changes.

    A fixed mmap threshold too: by default glibc raises it after each large
    block freed (up to 32 MB), so a huge message (a 20 MB MQTT payload, which
    paho reads whole before anyone can refuse it) would leave its memory in
    the heap for good; with it fixed, every large block goes back at free.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_ARENA_MAX, 1)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (AttributeError, OSError):
        pass


def name_os_thread(name: str) -> None:
    """Show a thread's name in top, ps and /proc/PID/task/*/comm (Python keeps its names to itself).

    A thread may rename itself through /proc: no ctypes, no prctl. At most
    15 characters show; anywhere without /proc the name stays Python's only.
    """
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w", encoding="utf-8") as comm:
            comm.write(name[:15])
    except OSError:
        pass


class Tee:
    """The writer's closed-file announcements, to every upload sink's own queue."""

    def __init__(self, *queues: "queue.Queue[ClosedFile]") -> None:
        self.queues = queues

    def put(self, item: ClosedFile) -> None:
        for q in self.queues:
            q.put(item)


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


class Fanout(ReaderListener):
    """One reader's events, fanned out: rows to the writer's queue, the live state, relay.json, the status line."""

    def __init__(self, daemon: "Daemon", name: str) -> None:
        self.daemon = daemon
        self.name = name
        self.live = daemon.live
        self.thread = f"reader {name}"
        self.heartbeat()  # from now on the watchdog waits for this reader too

    def heartbeat(self) -> None:
        self.daemon.heartbeats.beat(self.thread)

    def reading(self, measurement: Measurement, relay: Optional[bool]) -> None:
        rows = self.daemon.rows
        rows.put((self.name, measurement))
        if rows.qsize() >= WAKE_WRITER_AT:  # else it takes them when it flushes
            self.daemon.writer.wake.set()
        if self.live is not None:
            self.live.reading(self.name, measurement, relay=relay)
        if self.daemon.echo is not None:
            self.daemon.echo(self.name, measurement)

    def connected(self) -> None:
        if self.live is not None:
            self.live.connected(self.name)

    def disconnected(self) -> None:
        if self.live is not None:
            self.live.disconnected(self.name)

    def clock_trust_changed(self) -> None:
        self.daemon._clock_trust_changed()

    def relay_memory_changed(self, memory: dict) -> None:
        self.daemon._relay_memory(self.name, memory)

    def watermark_changed(self, memory: dict) -> None:
        self.daemon.saved_clocks.put(self.name, memory)


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
        self.identity = identity_for(config)
        self.writer = Writer(
            general.data_dir,
            config.file_stems(),
            general.data_format,
            self.clock,
            buffer_seconds=general.data_buffer_size,
            grace=general.hour_close_grace,
            max_buffered_rows=general.max_buffered_rows,
            closed_files=self._announcements(config),  # None: nobody takes them
        )
        self.uploader = self._uploader_for(config)
        self.retention = self._retention_for(config)  # after the uploader: it reads the ledger that one compacts
        # A third of the stall limit: a live thread never looks stuck, a stuck one soon does.
        self.heartbeat_interval = general.watchdog_stall / 3
        self.readers: Dict[str, MeterReader] = {}
        data_dir = general.data_dir  # what the last run left (saved.py): read once, here (energy.json: _live_for)
        self.saved_relays = SavedMeters(data_dir / RELAY_FILE, "no relay is latched",
                                        "the relay's latch would not survive a restart")
        self.saved_clocks = SavedMeters(data_dir / CLOCK_FILE, "each meter's watermark is its newest second on disk",
                                        "after a restart, right readings may be skipped until the meter passes "
                                        "the wrong stamps it had")
        self.live = self._live_for(config)
        if self.live is not None:
            self.writer.listener = self.live  # the energy counts what reached the disk, once
        self.influx, self.influx_live = self._influx_for(config)  # after the live state its live points read
        self.mqtt = None  # the MQTT publisher, made by its thread once the readers exist
        self.web = self._web_for(config)
        self._writer_thread: Optional[threading.Thread] = None
        self._threads: List[threading.Thread] = []
        self._stuck_logged = False
        self._reading = "reading " + ", ".join(f"{d.name} at {d.address}" for d in config.devices)
        self._ready_sent = False  # READY sent: a change of clock trust updates the status line
        self._status_lock = threading.Lock()

    def _uploader_for(self, config: Config):
        """An Uploader when BigQuery is configured, else None (and no thread)."""
        if config.bigquery is None:
            return None
        from .upload.bigquery import BigQueryTarget
        from .upload.uploader import Uploader

        return Uploader(
            config.general.data_dir,
            BigQueryTarget(config.bigquery, config.named_files),
            self.clock,
            devices=device_values(config, self.identity),
            max_backoff=config.bigquery.max_backoff,
        )

    def _announcements(self, config: Config):
        """Where the writer announces closed files: each configured sink's queue."""
        self.influx_files: "queue.Queue[ClosedFile]" = queue.Queue()
        sinks = ([self.closed_files] if config.bigquery else []) + ([self.influx_files] if config.influxdb else [])
        return sinks[0] if len(sinks) == 1 else Tee(*sinks) if sinks else None

    def _influx_for(self, config: Config):
        """The InfluxDB sink and its live points (None each when not configured)."""
        if config.influxdb is None:
            return None, None
        from .upload.influx_uploader import InfluxUploader, LivePoints
        from .upload.influxdb import InfluxTarget

        devices = device_values(config, self.identity)
        names = {(d.name if config.named_files else ""): d.name for d in config.devices}
        sink = InfluxUploader(config.general.data_dir, InfluxTarget(config.influxdb, self.clock), self.clock,
                              devices=devices, names=names, max_backoff=config.influxdb.max_backoff)
        if not config.influxdb.live:
            return sink, None
        by_name = {d.name: devices[d.name if config.named_files else ""] for d in config.devices}
        return sink, LivePoints(self.live, InfluxTarget(config.influxdb, self.clock), self.clock, by_name)

    def _retention_for(self, config: Config):
        """Retention when ``retention_days`` is set, else None (and no thread)."""
        if config.general.retention_days is None:
            return None
        from .upload.retention import Retention

        from .upload.ledger import INFLUX_LEDGER_NAME as INFLUX_LEDGER
        from .upload.ledger import LEDGER_NAME

        ledgers = ([LEDGER_NAME] if config.bigquery else []) + ([INFLUX_LEDGER] if config.influxdb else [])
        return Retention(config.general.data_dir, self.clock, config.general.retention_days, ledgers=ledgers)

    def _live_for(self, config: Config):
        """The live state when an output shows it (MQTT, the page), else None; run() restores its energy."""
        if config.mqtt is None and config.http is None and not (config.influxdb and config.influxdb.live):
            return None
        from .dashboard import history_seconds
        from .live import LiveState
        from .clock import time_zone
        from .tariff import utc_pricer

        general = config.general
        return LiveState(
            self.clock,
            general.data_dir,
            config.file_stems(),
            history_seconds=history_seconds(config) if config.http is not None else 0,  # the page's last hour
            data_format=general.data_format,
            # Energy is saved (and shown) once its rows are on disk: saving more often than the writer flushes gains nothing.
            checkpoint_interval=min(60.0, max(1.0, general.data_buffer_size)),
            # runs (runs.py): the running sensor, the finished event, /metrics and the page's band
            runs={d.name: d.runs for d in config.devices},
            price=utc_pricer(config.pricing(), time_zone(config.report.timezone)),
            energy_file=saved_energy(general.data_dir),  # read once, here, only when something shows it
        )

    def _web_for(self, config: Config):
        """The page, /metrics and /healthz when http: is configured, else None."""
        if config.http is None:
            return None
        from .web import Sources, WebServer

        sources = Sources(self.live, lambda: {name: r.stats for name, r in self.readers.items()},
                          self.writer, self.uploader, self.health, self.identity.meters, self._ble_stats, self.influx)
        return WebServer(config, sources, self.clock)

    def health(self) -> List[str]:
        """Why the service is not healthy (for /healthz): the threads the watchdog would not vouch for."""
        stuck = self._stuck(self._writer_thread) if self._writer_thread is not None else ["starting up"]
        return [f"no sign of life from {', '.join(stuck)} for {self.config.general.watchdog_stall:g} s"] if stuck else []

    # --- threads ----------------------------------------------------------------

    def _reader_for(self, device: DeviceConfig) -> MeterReader:
        settings = ReaderSettings.of(device, self.config.general, self.heartbeat_interval)
        memory = MeterMemory(self.writer.last_time(device.name), self._relay_saved_for(device),
                             self.saved_clocks.get(device.name))
        links = links_for(settings, rfcomm_factory=self.rfcomm_factory, ble_client_factory=ble_client_factory(device))
        return MeterReader(settings, self.clock, self.stop, Fanout(self, device.name), links, memory=memory)

    def _relay_saved_for(self, device: DeviceConfig) -> dict:
        """A btwattch2's relay memory as saved (relay.json); the live state shows the latch."""
        if not dialect(device.model).has_relay:
            return {}
        saved = self.saved_relays.get(device.name)
        if self.live is not None:
            self.live.relay_latch(device.name, saved.get("overloaded") is True)
        return saved

    def _relay_memory(self, name: str, memory: dict) -> None:
        """Save a relay's memory at once: the latch, last set state and on-time must survive a restart."""
        if self.live is not None:
            self.live.relay_latch(name, memory["overloaded"])
        self.saved_relays.put(name, memory)

    def _read_meter(self, name: str, reader: MeterReader) -> None:
        try:
            reader.run()
        except SetupError as exc:
            self._fail(f"{name}: {exc}")
        except Exception:
            log.exception("%s: reader failed", name)
            self._fail(f"{name}: reader failed unexpectedly")

    def _write(self, writer_stop: threading.Event) -> None:
        try:
            self.writer.run(self.rows, writer_stop, self.heartbeats.beater("writer"), self.heartbeat_interval)
        except Exception:
            log.exception("writer failed")
            self._fail("writer failed unexpectedly")

    def _upload(self, uploader_stop: threading.Event) -> None:
        try:
            self.uploader.run(self.closed_files, uploader_stop)
        except Exception:
            log.exception("uploader failed; closed files stay queued for the next start")

    def _send_influx(self, influx_stop: threading.Event) -> None:
        try:
            self.influx.run(self.influx_files, influx_stop)
        except Exception:
            log.exception("InfluxDB sink failed; closed hours stay queued for the next start")

    def _send_influx_live(self) -> None:
        try:
            self.influx_live.run(self.stop)
        except Exception:
            log.exception("InfluxDB live points failed; the hours' uploads still send every row")

    def _delete_expired(self) -> None:
        try:
            self.retention.run(self.stop)
        except Exception:
            log.exception("retention failed; old hours stay until the next start")

    def _publish_mqtt(self, mqtt_stop: threading.Event) -> None:
        """The MQTT thread: a broker's faults are its own; it never stops the readers or the writer."""
        from .mqtt import Publisher

        relays = {name: r.request_relay for name, r in self.readers.items() if r.dialect.has_relay}
        self.mqtt = Publisher(self.config.mqtt, self.live, self.config.devices, self.clock, relays=relays,
                              identity=self.identity)
        try:
            self.mqtt.run(mqtt_stop)
        except Exception:
            log.exception("mqtt: the publisher failed; readings and files carry on without it")

    def _fail(self, why: str) -> None:
        log.error("%s; stopping", why)
        self.failure = self.failure or why
        self.stop.set()

    def _start(self, name: str, target: Callable[..., None], *args: object) -> threading.Thread:
        def named() -> None:
            name_os_thread(name)
            target(*args)

        thread = threading.Thread(target=named, name=name, daemon=True)
        thread.start()
        return thread

    # --- the main thread ------------------------------------------------------------

    def run(self) -> int:
        """Run until ``stop`` is set; 0 after a clean stop, 1 after a failure."""
        general = self.config.general
        one_malloc_arena()  # before the threads start: each would take an arena
        if self.web is not None:
            self.web.bind()  # a port in use stops start-up here, before anything starts
        self.writer.recover()
        for device in self.config.devices:  # before the page: /metrics names every meter from the first scrape
            self.readers[device.name] = self._reader_for(device)
        if self.live is not None:  # in a thread of its own: counting years of files must not delay reading
            self.live.restore({d.name: self.writer.last_time(d.name) for d in self.config.devices}, background=True)
        if self.web is not None:
            self.web.start()  # after restore: a scrape never sees the energy counter go back
        writer_stop, uploader_stop = threading.Event(), threading.Event()
        writer_thread = self._writer_thread = self._start("writer", self._write, writer_stop)
        uploader_thread = self._start("uploader", self._upload, uploader_stop) if self.uploader else None
        retention_thread = self._start("retention", self._delete_expired) if self.retention else None
        influx_stop = threading.Event()
        influx_thread = self._start("influxdb", self._send_influx, influx_stop) if self.influx else None
        live_thread = self._start("influxdb live", self._send_influx_live) if self.influx_live else None
        for name, reader in self.readers.items():
            self._threads.append(self._start(f"reader {name}", self._read_meter, name, reader))
        mqtt_stop = threading.Event()
        mqtt_thread = self._start("mqtt", self._publish_mqtt, mqtt_stop) if self.config.mqtt else None
        names = ", ".join(f"{d.name} at {d.address}" for d in self.config.devices)
        log.info("running: %s; data in %s", names, general.data_dir)
        with self._status_lock:  # a reader that stops waiting meanwhile updates it after
            note = self._clock_note()
            self._ready_sent = True
            self.notifier.ready(self._reading + note)
        self._supervise(writer_thread)
        self.notifier.stopping("stopping: flushing buffered rows")
        if self.web is not None:
            self.web.stop()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT)
        writer_stop.set()
        self.writer.wake.set()
        writer_thread.join(JOIN_TIMEOUT + general.data_buffer_size)
        if self.live is not None:
            self.live.save(force=True)  # every row is on disk now: the energy shown catches up
        if mqtt_thread is not None:
            mqtt_stop.set()
            mqtt_thread.join(JOIN_TIMEOUT)
        if uploader_thread is not None:
            uploader_stop.set()
            uploader_thread.join(JOIN_TIMEOUT)
            if uploader_thread.is_alive():
                log.warning("an upload is still in flight; it stays queued and is resolved at the next start")
        if retention_thread is not None:  # it stops with ``stop``; an unfinished pass is done at the next start
            retention_thread.join(JOIN_TIMEOUT)
        for thread, stop in ((influx_thread, influx_stop), (live_thread, self.stop)):
            if thread is not None:  # an unfinished write is sent again at the next start: it overwrites
                stop.set()
                thread.join(JOIN_TIMEOUT)
        self._report(final=True)
        self.notifier.close()
        return EXIT_FAILED if self.failure else EXIT_OK

    def _supervise(self, writer_thread: threading.Thread) -> None:
        """The main thread's loop, until ``stop``: it wakes only when something is due.

        That is a watchdog ping (every half WatchdogSec), a status line and an
        energy checkpoint; ``stop`` wakes it at once.
        """
        general = self.config.general
        tick = min(self.notifier.watchdog_interval or general.status_interval, general.status_interval,
                   self.live.checkpoint_interval if self.live else general.status_interval)
        next_status = self.clock.monotonic() + general.status_interval
        while not self.clock.sleep(tick, self.stop):
            self._feed_watchdog(writer_thread)
            if self.live is not None:
                self.live.checkpoint()
            now = self.clock.monotonic()
            if now >= next_status:
                next_status = now + general.status_interval
                self._report()

    def _feed_watchdog(self, writer_thread: threading.Thread) -> None:
        """Ping only while the writer and every reader are alive and recently active."""
        stuck = self._stuck(writer_thread)
        if not stuck:
            self.notifier.watchdog()
            self._stuck_logged = False
        elif not self._stuck_logged:
            self._stuck_logged = True
            log.error("no sign of life from %s for %g s: not feeding the watchdog",
                      ", ".join(stuck), self.config.general.watchdog_stall)

    def _stuck(self, writer_thread: threading.Thread) -> List[str]:
        """Threads that ended or showed no sign of life within watchdog_stall."""
        dead = [t.name for t in self._threads + [writer_thread] if not t.is_alive()]
        return dead + self.heartbeats.stale(self.config.general.watchdog_stall)

    def _clock_note(self) -> str:
        """What the status line adds: which clock is trusted and why, and the wait for the system clock."""
        if not self.readers:
            return ""
        note = "; " + next(iter(self.readers.values())).trust.describe()
        if any(r.trust.waiting(self.clock.monotonic()) for r in self.readers.values()):
            note += (f"; the system clock is not synchronised yet (a warning if it is not within "
                     f"{self.config.general.time_sync_wait:g} s)")
        return note

    def _clock_trust_changed(self) -> None:
        """A reader's view of the clocks changed (synchronised, stepped, the wait ran out): say so."""
        with self._status_lock:
            if self._ready_sent:
                self.notifier.status(self._reading + self._clock_note())

    def _ble_stats(self) -> Dict[str, object]:
        return {name: r.link_stats for name, r in self.readers.items() if r.link_stats is not None}

    def _report(self, final: bool = False) -> None:
        prefix = "final status " if final else "status "
        ble = self._ble_stats()
        for name, reader in self.readers.items():
            s = reader.stats
            # every MeterStats counter, so one added there shows here; reconnects as /metrics counts them
            log.info("%s%s: %s reconnects=%d", prefix, name, s.summary(), max(0, s.connects - 1))
            if name in ble:
                log.info("%s%s ble: %s", prefix, name, ble[name].summary())
        w = self.writer.stats
        written = " ".join(f"{k}={v}" for k, v in sorted(self.writer.counts().items()))
        log.info(
            "%swriter: rows_received=%d written: %s buffered=%d files_closed=%d write_errors=%d rows_dropped=%d",
            prefix, w.rows_received, written, self.writer.pending_rows(),
            w.files_closed, w.write_errors, w.rows_dropped,
        )
        if self.uploader is not None:
            u = self.uploader.stats
            log.info("%suploader: uploaded=%d rows=%d jobs=%d queued=%d failed=%d retries=%d",
                     prefix, u.uploaded, u.rows, u.jobs, self.uploader.pending, u.failed, u.retries)
        if self.influx is not None:
            i = self.influx.stats
            log.info("%sinfluxdb: uploaded=%d points=%d requests=%d queued=%d failed=%d retries=%d%s", prefix,
                     i.uploaded, i.points, i.requests, self.influx.pending, i.failed, i.retries,
                     f" live={self.influx_live.written}" if self.influx_live else "")
        if self.retention is not None:
            log.info("%sretention: deleted=%d", prefix, self.retention.deleted)
        if self.mqtt is not None:
            m = self.mqtt.stats
            log.info("%smqtt: connected=%s connects=%d outages=%d connect_failures=%d published=%d dropped=%d "
                     "relay_commands=%d bad_commands=%d retained_commands=%d", prefix,
                     "yes" if self.mqtt.connected else "no", m.connects, m.outages, m.connect_failures, m.published,
                     m.dropped, m.relay_commands, m.bad_commands, m.retained_commands)
        if self.live is not None and self.live.stats.checkpoint_errors:
            log.info("%senergy: checkpoints=%d checkpoint_errors=%d", prefix,
                     self.live.stats.checkpoints, self.live.stats.checkpoint_errors)
        total = sum(r.stats.readings for r in self.readers.values())
        self.notifier.status(f"{total} readings, {w.files_closed} hours closed, {self.writer.pending_rows()} buffered"
                             + self._clock_note())
