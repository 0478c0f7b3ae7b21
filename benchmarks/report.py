"""Report speed: rows/s over hourly .gz files made by the real writer, and a year's estimate.

Run: .venv/bin/python benchmarks/report.py [--days 7] [--format csv|json]

A year of 1 Hz data from one meter is 8,760 hour files and about 31.5 M rows;
the report streams them one hour at a time, so memory stays flat. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import tempfile
import time
from pathlib import Path

from wattchecker_client.clock import FakeClock
from wattchecker_client.report import meter_report, time_zone
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.writer import Writer

START = dt.datetime(2026, 1, 1)
YEAR_ROWS = 365 * 86400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--format", choices=["csv", "json"], default="csv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        writer = Writer(data_dir, {"m": "wattchecker-data"}, [args.format], FakeClock(START))
        writer.recover()
        begin = time.perf_counter()
        for hour in range(args.days * 24):
            for second in range(3600):
                writer.add("m", air_conditioner(START + dt.timedelta(hours=hour, seconds=second)))
            writer.flush()
        made = time.perf_counter() - begin
        begin = time.perf_counter()
        report = meter_report(data_dir, "wattchecker-data", "m", time_zone("Asia/Tokyo"))
        elapsed = time.perf_counter() - begin
    rate = report.rows / elapsed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.days} days, {args.days * 24} hour files ({args.format}), {report.rows} rows "
          f"(made by the writer in {made:.0f} s)")
    print(f"report: {elapsed:.1f} s, {rate:,.0f} rows/s; a year of 1 Hz data (31.5 M rows) "
          f"would take about {YEAR_ROWS / rate / 60:.1f} min here")
    print(f"total {report.total().kwh:.2f} kWh over {len(report.days)} local days; peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
