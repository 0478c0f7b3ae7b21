"""`check-config --config FILE`: validate a config without starting anything."""

from __future__ import annotations

import argparse
import sys

from ..clocksync import NOBODY, SOURCES, decide
from ..clocktrust import trust_in_words
from ..config import load_config
from .common import EXIT_OK


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a config file without starting anything")
    p.add_argument("--config", required=True, help="path to config.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..daemon import preflight  # the service's own start-up checks, not a copy
    from ..identity import peek
    from ..mqtt import summary as mqtt_summary

    config = load_config(args.config)
    identity = peek(config.general.data_dir, {d.name: d.address for d in config.devices})
    for warning in preflight(config) + id_collisions(config):
        print(f"wattchecker-client: warning: {warning}", file=sys.stderr)
    g = config.general
    meters = "; ".join(
        f"{d.name} at {d.address}" + (f" channel {d.channel}" if d.channel else "") + f" (id {identity.meters[d.name]})"
        for d in config.devices
    )
    bigquery = (
        f"{config.bigquery.dataset_id}.{config.bigquery.table_id}" if config.bigquery else "not configured"
    )
    print(f"{args.config}: OK")
    print(f"  meters: {meters}")
    for d in config.devices:
        if d.model == "btwattch2":
            from ..relay import RelaySettings, describe

            print(f"  relay of {d.name}: {describe(d.relay or RelaySettings())}")
    print(f"  data: {g.data_dir} ({', '.join(g.data_format)}), flushed every {g.data_buffer_size:g} s")
    print(f"  time sync: {time_sync(g.time_sync_wait)}")
    print(f"  BigQuery: {bigquery}")
    if config.influxdb is not None:
        from ..upload.influxdb import summary as influx_summary

        print(f"  InfluxDB: {influx_summary(config.influxdb)}")
    print(f"  MQTT: {mqtt_summary(config.mqtt, identity) if config.mqtt else 'not configured'}")
    print(f"  page: {f'http://{config.http.listen}/ (/metrics, /healthz)' if config.http else 'not configured'}")
    return EXIT_OK


def id_collisions(config) -> list:
    """Two meters of this config that would share one id: one set of topics, one Home Assistant device."""
    from ..identity import collisions

    return [f"devices: {a!r} and {b!r} would share the id {key!r} (their MQTT topics, Home Assistant device "
            f"and BigQuery device): give each its own address"
            for a, b, key in collisions({d.name: d.address for d in config.devices})]


def time_sync(wait: float) -> str:
    """Which clock is trusted now, who says so (docs/clock.md), and the time_sync_wait setting in words."""
    answer = decide(SOURCES)
    said = "nobody here can tell" if answer.source == NOBODY else f"says {answer.source}"
    trust = f"{trust_in_words(answer.synchronised)} (now, {said})"
    if not wait:
        return f"{trust}; a warning at once while it is not synchronised (time_sync_wait: 0)"
    return f"{trust}; a warning if it is still not synchronised {wait:g} s after start (time_sync_wait)"
