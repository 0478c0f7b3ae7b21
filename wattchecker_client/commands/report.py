"""`report --config FILE`: kWh and cost per local day, a chart, a BigQuery view."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import List

from ..config import ConfigError, load_config
from .common import EXIT_OK, iso_date


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="kWh and cost per day from the data dir; a chart; a BigQuery view")
    p.add_argument("--config", required=True, help="path to config.yaml")
    p.add_argument("--from", dest="first", type=iso_date, help="first local day, YYYY-MM-DD")
    p.add_argument("--to", dest="last", type=iso_date, help="last local day, YYYY-MM-DD")
    p.add_argument("--timezone", help="days in this time zone (default: report.timezone, Asia/Tokyo)")
    p.add_argument("--price", type=float, help="one price per kWh instead of the tariff (default: tariff:, else "
                   "report.price, 25)")
    p.add_argument("--currency", help="currency name (default: report.currency, JPY)")
    p.add_argument("--meter", help="only this meter (default: each one)")
    p.add_argument("--png", metavar="PATH", help="also draw the chart (needs the [report] extra)")
    p.add_argument("--csv", metavar="PATH", help="also write the per-day numbers as CSV")
    p.add_argument("--by-period", action="store_true", help="also kWh and cost per tariff period")
    p.add_argument("--runs", action="store_true", help="also every run of the appliance (reads every row), and "
                   "thresholds suggested from its history")
    p.add_argument("--runs-csv", metavar="PATH", help="also write the runs as CSV (implies --runs)")
    p.add_argument("--sql", action="store_true", help="print a BigQuery view with the same numbers, and stop")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..clock import Clock, utc_epoch
    from ..report import (bigquery_view_sql, csv_rows, meter_report, period_table, standby_line, table,
                          time_zone)
    from ..tariff import Tariff

    config = load_config(args.config)
    tz_name = args.timezone or config.report.timezone
    price = config.report.price if args.price is None else args.price
    tariff = config.pricing() if args.price is None else Tariff.flat(args.price)
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
        if config.tariff is not None and args.price is None:
            print(f"wattchecker-client: warning: the view prices at report.price ({price:g}); the tariff: section "
                  "is not translated to SQL", file=sys.stderr)
        # Per device always: every table this release makes has the column, and other Pis may share it.
        print(bigquery_view_sql(ref, tz_name, price, True), end="")
        return EXIT_OK
    devices = [d for d in config.devices if args.meter in (None, d.name)]
    if not devices:
        raise ConfigError(f"--meter: no meter named {args.meter!r} in {args.config}")
    reports = []
    now = utc_epoch(Clock().now())
    price_now = tariff.average_price(now + int(dt.datetime.fromtimestamp(now, tz).utcoffset().total_seconds()))
    runs_lines: List[str] = []
    for device in devices:
        report = meter_report(config.general.data_dir, config.file_stem(device), device.name, tz,
                              args.first, args.last, tariff=tariff, resting_below=device.runs.stop_watts)
        for problem in report.problems:
            print(f"wattchecker-client: warning: {problem}", file=sys.stderr)
        print("\n".join(table(report, tz_name, tariff, currency)))
        line = standby_line(report, price_now, currency)
        if line:
            print(line)
        if args.by_period:
            print("\n".join(period_table(report, tariff, currency)))
        if args.runs or args.runs_csv:
            runs_lines += print_runs(config, device, tz, tariff, currency, args)
        reports.append(report)
    if args.csv:
        with open(args.csv, "w", encoding="utf-8") as f:
            f.write("date,meter,kwh,cost,hours_covered,peak_w,standby_w,standby_share\n")
            for report in reports:
                f.writelines(line + "\n" for line in csv_rows(report))
    if args.runs_csv:
        with open(args.runs_csv, "w", encoding="utf-8") as f:
            f.write("meter,start,end,seconds,kwh,cost,peak_w\n")
            f.writelines(line + "\n" for line in runs_lines)
    if args.png:
        from ..chart import render

        one_price = price if args.price is not None or config.tariff is None else None
        render(reports, Path(args.png), tz_name, one_price, currency)
        print(f"chart: {args.png}")
    return EXIT_OK


def print_runs(config, device, tz, tariff, currency: str, args: argparse.Namespace) -> List[str]:
    """The runs table of one meter and thresholds suggested from its rows; its runs' CSV lines."""
    from ..report import day_range, meter_rows, runs_csv, runs_table
    from ..tariff import utc_pricer
    from ..runs import detect, suggest

    problems: List[str] = []
    rows = list(meter_rows(config.general.data_dir, config.file_stem(device), *day_range(tz, args.first, args.last),
                           problems))
    for problem in problems:
        print(f"wattchecker-client: warning: {problem}", file=sys.stderr)
    settings = device.runs
    runs, going = detect(rows, settings, utc_pricer(tariff, tz))
    print(f"runs of {device.name}: above {settings.start_watts:g} W, until below {settings.stop_watts:g} W "
          f"for {settings.stop_after} s")
    print("\n".join(runs_table(runs, going, tz, currency)))
    suggested = suggest(rows)
    if suggested is not None:
        print(f"suggested from this history: runs: {{start_watts: {suggested.start_watts:g}, "
              f"stop_watts: {suggested.stop_watts:g}, stop_after: {suggested.stop_after}}}")
    return list(runs_csv(device.name, runs, tz))
