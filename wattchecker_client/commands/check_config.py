"""`check-config --config FILE`: validate a config without starting anything."""

from __future__ import annotations

import argparse
import sys

from ..config import load_config
from .common import EXIT_OK


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a config file without starting anything")
    p.add_argument("--config", required=True, help="path to config.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..daemon import preflight  # the service's own start-up checks, not a copy

    config = load_config(args.config)
    for warning in preflight(config):
        print(f"wattchecker-client: warning: {warning}", file=sys.stderr)
    g = config.general
    meters = "; ".join(
        f"{d.name} at {d.address}" + (f" channel {d.channel}" if d.channel else "") for d in config.devices
    )
    bigquery = (
        f"{config.bigquery.dataset_id}.{config.bigquery.table_id}" if config.bigquery else "not configured"
    )
    print(f"{args.config}: OK")
    print(f"  meters: {meters}")
    print(f"  data: {g.data_dir} ({', '.join(g.data_format)}), flushed every {g.data_buffer_size:g} s")
    print(f"  BigQuery: {bigquery}")
    return EXIT_OK
