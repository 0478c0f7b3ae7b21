"""/metrics: a prometheus_client collector that reads the live state and the counters at scrape time.

Nothing is recorded per reading: each scrape reads what the reader, writer and
uploader threads already count, so a reading costs nothing extra and a meter
gone quiet simply has no power, voltage or current sample. Names follow
node_exporter: base units, ``_total`` on counters. Per meter two labels: ``meter``
(its configured name) and ``meter_id`` (identity.py: unique across Pis, so one
Prometheus scraping every Pi never mixes two meters named alike).
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Callable, Dict, Iterator, Optional, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .clock import Clock, utc_epoch
from .dashboard import current

if TYPE_CHECKING:  # types only: importing the uploader would load hashing, TLS and the ledger for nothing
    from .meter import MeterStats
    from .upload.uploader import Uploader
    from .writer import Writer

PREFIX = "wattchecker_"
METER_LABELS = ["meter", "meter_id"]

# MeterStats fields with a better name or help than the generic one. A field
# not listed here is exported as wattchecker_<field>_total all the same, so a
# counter added to MeterStats appears without touching this module.
METER_COUNTERS: Dict[str, Tuple[str, str]] = {
    "readings": ("readings", "New readings received (one per meter second)."),
    "crc_errors": ("crc_errors", "Frames dropped because their CRC-8 did not match."),
    "rejected": ("rejected_readings", "Readings dropped as untrustworthy (bad status, impossible values)."),
    "gaps": ("gaps", "Runs of missing seconds between two readings."),
    "missing_seconds": ("missing_seconds", "Seconds with no reading, summed over all gaps."),
    "connects": ("connects", "Successful connections (handshake done), the first included."),
    "link_errors": ("link_errors", "Failed connection attempts and dropped links."),
    "truncated": ("truncated_frames", "Frames cut off before their end."),
    "duplicates": ("duplicate_readings", "Readings of a second already recorded (skipped)."),
    "stale_seconds": ("stale_readings", "Readings older than the last one kept (a clock set back; skipped)."),
    "ahead_of_host": ("readings_ahead_of_host", "Readings stamped ahead of the synchronised host clock (skipped)."),
    "behind_host": ("readings_behind_host", "Readings stamped behind a host clock known to be right (skipped)."),
    "clock_resets": ("clock_resets", "Times the meter's clock was set again (drift, a host clock step, a stamp ahead)."),
    "clock_steps": ("host_clock_steps", "Steps of the host clock seen (the meter's clock is then checked at once)."),
}
# BleStats fields (an RS-BTWATTCH2's links), exported as wattchecker_ble_<field>_total unless named here.
BLE_COUNTERS: Dict[str, Tuple[str, str]] = {
    "connects": ("ble_connects", "BLE links opened (BlueZ connected and notifications subscribed)."),
    "half_open": ("ble_half_open_connects", "Links BlueZ called connected that could not carry the protocol."),
    "resubscribes": ("ble_resubscribes", "Times notifications went quiet and were subscribed to again."),
    "silent_closes": ("ble_silent_closes", "Links closed because notifications stayed quiet after re-subscribing."),
    "notifications": ("ble_notifications", "Notifications received."),
    "bytes_in": ("ble_received_bytes", "Bytes received in notifications."),
    "bytes_out": ("ble_sent_bytes", "Bytes written to the meter."),
}
WRITER_COUNTERS: Dict[str, Tuple[str, str]] = {
    "write_errors": ("write_errors", "Failed file writes (rows stay buffered and are retried)."),
    "rows_dropped": ("buffer_dropped_rows", "Rows dropped because the buffer was full."),
    "rows_received": ("writer_received_rows", "Rows handed to the writer."),
    "files_closed": ("closed_files", "Hourly files closed."),
}


def _counter_fields(stats: object):
    return [f.name for f in fields(stats) if isinstance(getattr(stats, f.name), int)]


class LiveCollector(Collector):
    """Every wattchecker_* family, computed from the other threads' state when scraped."""

    def __init__(
        self,
        live,
        meter_stats: Callable[[], Dict[str, MeterStats]],
        writer: Writer,
        uploader: Optional[Uploader],
        clock: Clock,
        meter_ids: Optional[Dict[str, str]] = None,
        ble_stats: Callable[[], Dict[str, object]] = dict,
        today: Optional[Callable[[], Dict[str, dict]]] = None,
        influx=None,
    ) -> None:
        self.influx = influx  # the InfluxDB sink, or None
        self.live = live
        self.today = today  # the page's EnergyView.summary: per meter today's "kwh" and "cost"
        self.ble_stats = ble_stats
        self.meter_ids = meter_ids or {}
        self.meter_stats = meter_stats
        self.writer = writer
        self.uploader = uploader
        self.clock = clock

    def _labels(self, name: str) -> list:
        return [name, self.meter_ids.get(name, name)]

    def collect(self) -> Iterator[Metric]:
        yield from self._live()
        yield from self._meter_counters()
        yield from self._counters_by_meter(self.ble_stats(), BLE_COUNTERS, "ble_")
        yield from self._writer()
        if self.uploader is not None:
            yield from self._uploads(self.uploader)
        if self.influx is not None:
            yield from self._influx_uploads(self.influx)
        yield GaugeMetricFamily(PREFIX + "clock_synchronised",
                                "1 while the system clock is synchronised (NTP), else 0: readings then carry the "
                                "meter's own clock, unless the system clock was stepped.",
                                value=1.0 if self.clock.synchronised() else 0.0)

    def _live(self) -> Iterator[Metric]:
        power = GaugeMetricFamily(PREFIX + "power_watts", "Active power now; absent when the meter is quiet.",
                                  labels=METER_LABELS)
        volts = GaugeMetricFamily(PREFIX + "voltage_volts", "RMS voltage now; absent when the meter is quiet.",
                                  labels=METER_LABELS)
        amps = GaugeMetricFamily(PREFIX + "current_amperes", "RMS current now; absent when the meter is quiet.",
                                 labels=METER_LABELS)
        connected = GaugeMetricFamily(
            PREFIX + "meter_connected", "1 while the link is up and a reading came within 10 s, else 0 (then no power, voltage or current).",
            labels=METER_LABELS)
        stamp = GaugeMetricFamily(
            PREFIX + "last_reading_timestamp_seconds", "The meter's clock stamp of its last reading (Unix time).",
            labels=METER_LABELS)
        energy = CounterMetricFamily(
            PREFIX + "energy_joules", "Energy used since the data began (the report's integral; never decreases; absent until counted).",
            labels=METER_LABELS)
        mono = self.clock.monotonic()
        for name, state in sorted(self.live.snapshot().items()):
            now = current(state, mono)
            labels = self._labels(name)
            connected.add_metric(labels, 0.0 if now is None else 1.0)
            if state.energy_known:  # as MQTT: no 0 then a year in one scrape while the files are counted
                energy.add_metric(labels, state.energy_joules)
            if state.measurement is not None:
                stamp.add_metric(labels, float(utc_epoch(state.measurement.time)))
            if now is not None:
                power.add_metric(labels, now.watts)
                volts.add_metric(labels, now.volts)
                amps.add_metric(labels, now.milliamps / 1000)
        yield from (power, volts, amps, connected, stamp, energy)
        yield from self._runs()
        yield from self._today()
        yield from self._relay_latches()

    def _runs(self) -> Iterator[Metric]:
        """runs.py: finished runs since start-up, and how long the run going on has lasted (0 at rest)."""
        total = CounterMetricFamily(PREFIX + "runs", "Runs of the appliance finished since the service started.",
                                    labels=METER_LABELS)
        seconds = GaugeMetricFamily(PREFIX + "run_seconds",
                                    "Seconds the run going on has lasted up to its last working reading; 0 at rest.",
                                    labels=METER_LABELS)
        for name, state in sorted(self.live.snapshot().items()):
            total.add_metric(self._labels(name), state.runs_finished)
            seconds.add_metric(self._labels(name), float(state.run.seconds) if state.run is not None else 0.0)
        yield from (total, seconds)

    def _today(self) -> Iterator[Metric]:
        """Today's cost (the local day of report.timezone, each quarter hour at the tariff then), as the page shows it."""
        if self.today is None:
            return
        cost = GaugeMetricFamily(PREFIX + "cost_today", "Cost of today's energy so far, in report.currency, at the "
                                 "tariff of each quarter hour.", labels=METER_LABELS)
        for name, summary in sorted(self.today().items()):
            cost.add_metric(self._labels(name), summary["cost"])
        yield cost

    def _relay_latches(self) -> Iterator[Metric]:
        """The over-power latch of each RS-BTWATTCH2 (relay.max_watts); absent for a meter without a relay."""
        latch = GaugeMetricFamily(
            PREFIX + "relay_overloaded", "1 while the relay is latched off for over-power, until an explicit ON.",
            labels=["meter"])
        relay = GaugeMetricFamily(PREFIX + "relay_on", "1 while the relay is on, 0 while off; absent for a meter "
                                  "without a relay or before its state is known.", labels=["meter"])
        for name, state in sorted(self.live.snapshot().items()):
            if state.overloaded is not None:
                latch.add_metric([name], 1.0 if state.overloaded else 0.0)
            if state.relay is not None:
                relay.add_metric([name], 1.0 if state.relay else 0.0)
        yield latch
        yield relay

    def _meter_counters(self) -> Iterator[Metric]:
        stats = self.meter_stats()
        if not stats:
            return
        reconnects = CounterMetricFamily(PREFIX + "reconnects", "Connections after the first.", labels=METER_LABELS)
        for meter, s in sorted(stats.items()):
            reconnects.add_metric(self._labels(meter), max(0, s.connects - 1))
        yield reconnects
        yield from self._counters_by_meter(stats, METER_COUNTERS, "")

    def _counters_by_meter(self, stats: Dict[str, object], named: Dict[str, Tuple[str, str]],
                           prefix: str) -> Iterator[Metric]:
        """One family per integer field of a stats dataclass, a sample per meter: a new field needs no code here."""
        families: Dict[str, CounterMetricFamily] = {}
        for meter, s in sorted(stats.items()):
            for field_name in _counter_fields(s):
                if field_name not in families:
                    base, doc = named.get(field_name, (prefix + field_name, f"{type(s).__name__}.{field_name}."))
                    families[field_name] = CounterMetricFamily(PREFIX + base, doc, labels=METER_LABELS)
                families[field_name].add_metric(self._labels(meter), getattr(s, field_name))
        yield from families.values()

    def _writer(self) -> Iterator[Metric]:
        written = CounterMetricFamily(PREFIX + "rows_written", "Rows written to the data files, per format.",
                                      labels=["meter", "format"])
        for key, rows in sorted(self.writer.counts().items()):
            meter, fmt = key.rsplit("/", 1)
            written.add_metric([meter, fmt], rows)
        yield written
        stats = self.writer.stats
        for field_name in _counter_fields(stats):
            base, doc = WRITER_COUNTERS.get(field_name, ("writer_" + field_name, f"WriterStats.{field_name}."))
            yield CounterMetricFamily(PREFIX + base, doc, value=getattr(stats, field_name))
        yield GaugeMetricFamily(PREFIX + "buffered_rows", "Rows in memory waiting for the next flush.",
                                value=self.writer.pending_rows())

    def _uploads(self, uploader: Uploader) -> Iterator[Metric]:
        s = uploader.stats
        yield CounterMetricFamily(PREFIX + "uploaded_files", "Hourly files loaded into BigQuery.", value=s.uploaded)
        yield CounterMetricFamily(PREFIX + "upload_failed_files", "Hourly files BigQuery refused (moved to failed/).",
                                  value=s.failed)
        yield GaugeMetricFamily(PREFIX + "upload_queued_files", "Closed hours waiting to be uploaded.",
                                value=uploader.pending)
        last = getattr(s, "last_upload", None)
        if last is not None:
            yield GaugeMetricFamily(PREFIX + "last_upload_timestamp_seconds",
                                    "When the last upload succeeded (Unix time).", value=float(utc_epoch(last)))


    @staticmethod
    def _influx_uploads(sink) -> Iterator[Metric]:
        s = sink.stats
        yield CounterMetricFamily(PREFIX + "influxdb_uploaded_hours", "Closed hours written to InfluxDB.",
                                  value=s.uploaded)
        yield CounterMetricFamily(PREFIX + "influxdb_failed_hours",
                                  "Closed hours InfluxDB refused (their points in failed/).", value=s.failed)
        yield GaugeMetricFamily(PREFIX + "influxdb_queued_hours", "Closed hours waiting to be written to InfluxDB.",
                                value=sink.pending)


def registry_for(collector: LiveCollector) -> CollectorRegistry:
    """A registry holding only our collector (no process or Python metrics from the default one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
