"""`report --config FILE`: kWh and cost per local day, a chart, a BigQuery view."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, load_config
from .common import EXIT_OK, iso_date


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="kWh and cost per day from the data dir; a chart; a BigQuery view")
    p.add_argument("--config", required=True, help="path to config.yaml")
    p.add_argument("--from", dest="first", type=iso_date, help="first local day, YYYY-MM-DD")
    p.add_argument("--to", dest="last", type=iso_date, help="last local day, YYYY-MM-DD")
    p.add_argument("--timezone", help="days in this time zone (default: report.timezone, Asia/Tokyo)")
    p.add_argument("--price", type=float, help="price per kWh (default: report.price, 25)")
    p.add_argument("--currency", help="currency name (default: report.currency, JPY)")
    p.add_argument("--meter", help="only this meter (default: each one)")
    p.add_argument("--png", metavar="PATH", help="also draw the chart (needs the [report] extra)")
    p.add_argument("--csv", metavar="PATH", help="also write the per-day numbers as CSV")
    p.add_argument("--sql", action="store_true", help="print a BigQuery view with the same numbers, and stop")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import bigquery_view_sql, csv_rows, meter_report, table, time_zone

    config = load_config(args.config)
    tz_name = args.timezone or config.report.timezone
    price = config.report.price if args.price is None else args.price
    currency = args.currency or config.report.currency
    try:
        tz = time_zone(tz_name)
    except ValueError as exc:
        raise ConfigError(f"--timezone: {exc}") from None
    if args.sql:
        if config.bigquery is None:
            raise ConfigError(f"{args.config}: --sql needs a bigquery: section (the table to read)")
        project = config.bigquery.project_id or "YOUR_PROJECT"
        ref = f"{project}.{config.bigquery.dataset_id}.{config.bigquery.table_id}"
        # Per device always: every table this release makes has the column, and other Pis may share it.
        print(bigquery_view_sql(ref, tz_name, price, True), end="")
        return EXIT_OK
    devices = [d for d in config.devices if args.meter in (None, d.name)]
    if not devices:
        raise ConfigError(f"--meter: no meter named {args.meter!r} in {args.config}")
    reports = []
    for device in devices:
        report = meter_report(config.general.data_dir, config.file_stem(device), device.name, tz,
                              args.first, args.last)
        for problem in report.problems:
            print(f"wattchecker-client: warning: {problem}", file=sys.stderr)
        print("\n".join(table(report, tz_name, price, currency)))
        reports.append(report)
    if args.csv:
        with open(args.csv, "w", encoding="utf-8") as f:
            f.write("date,meter,kwh,cost,hours_covered,peak_w\n")
            for report in reports:
                f.writelines(line + "\n" for line in csv_rows(report, price))
    if args.png:
        from ..chart import render

        render(reports, Path(args.png), tz_name, price, currency)
        print(f"chart: {args.png}")
    return EXIT_OK
