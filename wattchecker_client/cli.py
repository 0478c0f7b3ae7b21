"""Command line: `wattchecker-client read|simulate|run|demo|check-config|upload|report ...`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, List, Optional

from . import __version__
from .clock import Clock
from .config import Config, ConfigError, load_config, parse_config
from .daemon import EXIT_FAILED, EXIT_OK, Daemon, configure_logging
from .formats import FORMATTERS, json_line
from .meter import Backoff, MeterReader
from .protocol import Measurement
from .transport import DEFAULT_TIMEOUT, SetupError

log = logging.getLogger("wattchecker_client")

EXIT_SETUP = 2  # a configuration error: systemd does not restart on it


def byte_value(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 0xFF:
        raise argparse.ArgumentTypeError(f"{text} is not a byte (0..255 or 0x00..0xFF)")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def on_stop_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` so loops end cleanly instead of dying mid-write."""

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# --- read ----------------------------------------------------------------------


def add_read(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("read", help="print live readings from a meter")
    p.add_argument("address", help="MAC (00:0C:BF:..), tty path (/dev/rfcomm0), tcp://HOST:PORT or sim://")
    p.add_argument("--channel", type=int, help="RFCOMM channel (default: look it up over SDP)")
    p.add_argument("--count", type=int, default=0, help="stop after this many readings (0: until Ctrl-C)")
    p.add_argument("--format", choices=sorted(FORMATTERS), default="json", help="row format (default json)")
    p.add_argument("--interval", type=positive_float, default=1.0, help="seconds between polls (default 1)")
    p.add_argument("--start-argument", type=byte_value, default=0, help="argument of the start command (default 0x00)")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, help="link timeout in seconds")
    p.set_defaults(func=cmd_read)


def cmd_read(args: argparse.Namespace) -> int:
    stop = threading.Event()
    on_stop_signals(stop)
    reader = MeterReader(
        args.address,
        Clock(),
        stop,
        channel=args.channel,
        poll_interval=args.interval,
        start_argument=args.start_argument,
        timeout=args.timeout,
        backoff=Backoff(initial=min(1.0, args.interval * 2)),
    )
    formatter = FORMATTERS[args.format]
    printed = 0
    for measurement in reader.readings():
        print(formatter(measurement), flush=True)
        printed += 1
        if args.count and printed >= args.count:
            break
    log.info("%d readings printed; %s", printed, reader.stats.summary())
    return EXIT_OK


# --- simulate -----------------------------------------------------------------


def add_simulate(sub: argparse._SubParsersAction) -> None:
    from .simulator import SimOptions

    p = sub.add_parser(
        "simulate",
        help="serve a simulated meter on TCP and/or a pty",
        description="Serve a simulated REX-BTWATTCH1 that speaks the real protocol. "
        "Prints one 'listening on ADDRESS' line per address.",
    )
    p.add_argument("--tcp", metavar="HOST:PORT", help="serve on TCP (default 127.0.0.1:0, a free port, without --pty)")
    p.add_argument("--pty", action="store_true", help="serve on a pseudo-terminal, like /dev/rfcommN")
    p.add_argument("--link", metavar="PATH", help="with --pty: keep a symlink to the current pty here")
    p.add_argument("--all-faults", action="store_true", help="turn every fault on at a moderate rate")
    for f in dataclasses.fields(SimOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=None, help=f.metadata["help"])
        else:
            kind = int if f.type == "int" else float
            p.add_argument(flag, type=kind, default=None, help=f"{f.metadata['help']} (default {f.default})")
    p.set_defaults(func=cmd_simulate)


ALL_FAULTS = {
    "corrupt_rate": 0.05,
    "junk_rate": 0.05,
    "stray_ack_rate": 0.05,
    "bad_status_rate": 0.02,
    "split_writes": True,
    "latency": 0.02,
    "drop_after": 50,
}


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulator import PtyServer, SimOptions, SimulatedMeter, TcpServer

    chosen = dict(ALL_FAULTS) if args.all_faults else {}
    for f in dataclasses.fields(SimOptions):
        value = getattr(args, f.name)
        if value is not None:
            chosen[f.name] = value
    try:
        options = SimOptions(**chosen)
    except ValueError as exc:
        raise SetupError(f"simulate: {exc}") from None
    meter = SimulatedMeter(options, Clock())
    servers: List = []
    if args.tcp or not args.pty:
        host, _, port = (args.tcp or "127.0.0.1:0").rpartition(":")
        servers.append(TcpServer(meter, host or "127.0.0.1", int(port)))
    if args.pty:
        servers.append(PtyServer(meter, args.link))
    stop = threading.Event()
    on_stop_signals(stop)
    for server in servers:
        server.start()
        print(f"listening on {server.address}", flush=True)
    stop.wait()
    for server in servers:
        server.close()
    return EXIT_OK


# --- run, demo, check-config -------------------------------------------------------


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the service: read meters, write hourly files")
    p.add_argument("--config", required=True, help="path to config.yaml")
    p.add_argument("--echo", action="store_true", help="also print each reading to standard output")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file without starting anything")
    p.add_argument("--config", required=True, help="path to config.yaml")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("upload", help="upload closed hours to BigQuery now")
    p.add_argument("--config", required=True, help="path to config.yaml")
    p.add_argument("--dry-run", action="store_true", help="only list what would be uploaded")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="closed .gz files to upload (also from failed/); default: every hour not yet uploaded")
    p.set_defaults(func=cmd_upload)

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
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="run the service against the built-in simulated meter")
    p.add_argument("--data-dir", default="demo-data", help="where to write files (default ./demo-data)")
    p.add_argument("--speed", type=positive_float, default=60.0,
                   help="the simulated meter's clock speed: 60 closes an hour a minute (default 60)")
    p.set_defaults(func=cmd_demo)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
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


def cmd_upload(args: argparse.Namespace) -> int:
    from .uploader import BigQueryTarget, Uploader, hour_files, readable_rows, PermanentError

    config = load_config(args.config)
    if config.bigquery is None:
        raise ConfigError(f"{args.config}: bigquery: is not configured; nothing to upload to")
    target = None if args.dry_run else BigQueryTarget(config.bigquery, config.named_files)
    uploader = Uploader(config.general.data_dir, target, Clock())
    files = hour_files([Path(p).resolve() for p in args.paths]) if args.paths else uploader.backlog()
    if args.paths and not files:
        raise ConfigError("none of the paths is a closed hour file (NAME.csv|json.YYYY-MM-DD_HH[.partN].gz)")
    progress = Progress(len(files))
    counts = {"uploaded": 0, "skipped": 0, "failed": 0, "retry": 0}
    rows = 0
    for done, hour_file in enumerate(files, 1):
        if args.dry_run:
            try:
                outcome, n = ("skipped", 0) if hour_file.key in uploader.ledger else ("uploaded", len(readable_rows(hour_file)[1]))
            except PermanentError:
                outcome, n = "failed", 0
        else:
            outcome, n = uploader.upload(hour_file)
        counts[outcome] += 1
        rows += n
        progress.show(done, rows)
        if outcome == "retry":
            break  # BigQuery cannot be reached: the rest would only wait too
    progress.close()
    left = len(files) - sum(counts.values())
    summary = [
        f"{'would upload' if args.dry_run else 'uploaded'} {counts['uploaded']} hour file(s), {rows} rows",
        f"skipped {counts['skipped']} already uploaded",
        f"failed {counts['failed']}" + (" (see failed/)" if counts["failed"] and not args.dry_run else ""),
    ]
    if counts["retry"]:
        summary.append(f"{counts['retry'] + left} left queued: BigQuery could not be reached")
    print("; ".join(summary))
    return EXIT_OK if not counts["failed"] and not counts["retry"] else EXIT_FAILED


def iso_date(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-27") from None


def cmd_report(args: argparse.Namespace) -> int:
    from .report import bigquery_view_sql, csv_rows, meter_report, table, time_zone

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
        print(bigquery_view_sql(ref, tz_name, price, config.named_files), end="")
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
        from .chart import render

        render(reports, Path(args.png), tz_name, price, currency)
        print(f"chart: {args.png}")
    return EXIT_OK


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty() and total > 0

    def show(self, done: int, rows: int) -> None:
        if self.enabled:
            filled = int(30 * done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} hours, {rows} rows")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def serve(config: Config, echo: Optional[Callable[[str, Measurement], None]] = None) -> int:
    """Run the daemon until SIGTERM or SIGINT."""
    configure_logging(config)
    daemon = Daemon(config, echo=echo)
    on_stop_signals(daemon.stop)
    try:
        return daemon.run()
    except OSError as exc:  # the data folder cannot even be created: maybe not mounted yet
        log.error("cannot use the data folder %s: %s", config.general.data_dir, exc.strerror or exc)
        return EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    return serve(config, echo=print_row if args.echo else None)


def print_row(name: str, measurement: Measurement) -> None:
    print(json_line(measurement), flush=True)


DEMO_CONFIG = """\
general:
  data_dir: {data_dir}
  data_buffer_size: 10
  data_format: [csv, json]
  poll_interval: {poll}
  status_interval: 30
device:
  address: "sim://?clock_speed={speed}"
"""


def cmd_demo(args: argparse.Namespace) -> int:
    data_dir = os.path.abspath(args.data_dir)
    text = DEMO_CONFIG.format(data_dir=json.dumps(data_dir), poll=1 / args.speed, speed=args.speed)
    config = parse_config(text, "<demo>")
    every = max(1, round(args.speed))
    seen = [0]

    def echo(name: str, measurement: Measurement) -> None:
        seen[0] += 1
        if seen[0] % every == 1 or every == 1:
            print(json_line(measurement), flush=True)

    print(f"demo: a simulated meter whose clock runs {args.speed:g}x real time; files in {data_dir}; "
          f"showing one reading in {every}; Ctrl-C to stop", file=sys.stderr, flush=True)
    return serve(config, echo=echo)


# --- entry point ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattchecker-client",
        description="Read a RATOC REX-BTWATTCH1 Bluetooth power meter.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_read(sub)
    add_simulate(sub)
    add_run(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (SetupError, ConfigError) as exc:
        print(f"wattchecker-client: error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return EXIT_OK
