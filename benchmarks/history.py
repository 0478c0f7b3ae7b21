"""A year of history: the report and the energy restore from hourly summaries against every row.

Run: .venv/bin/python benchmarks/history.py [--days 366] [--parts report,tariff,energy,retention,page]

Generates one meter's closed hours as the writer leaves them (CSV, gzipped;
a day of air-conditioner rows repeated with each day's date, so a year is
made in a minute or two), then prints side by side:

* report: every row (the path before summaries, as on main) against the
  first run after an upgrade (it backfills the summaries) and the next runs
  (summaries only), with the per-day kWh of both compared;
* tariff: the report from summaries with a time-of-use tariff (two plans,
  three periods, surcharges changing monthly) against one flat price, the
  best of three runs each, and their ratio (the issue asks for at most 1.5);
* energy: with ``energy.json`` deleted after summaries exist, the time until
  it is known; after an upgrade (no summaries), the time until known and
  whether any sample polled meanwhile showed a value below the files' total;
* retention: ``--from/--to`` over days whose hour files were deleted;
* page: the files the page reads at a cold load and at each closed hour,
  beside 1 and then 5 years of hour files.

Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import resource
import tempfile
import time
from pathlib import Path
from typing import Tuple

from wattchecker_client.clock import Clock, FakeClock, time_zone, utc_epoch
from wattchecker_client.config import parse_config
from wattchecker_client.dashboard import EnergyView
from wattchecker_client.datadir import summaries_path
from wattchecker_client.formats import csv_line
from wattchecker_client.live import LiveState
from wattchecker_client.report import meter_report, sources_for
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.tariff import Tariff

START = dt.datetime(2025, 1, 1)
STEM = "wattchecker-data"
TZ = time_zone("Asia/Tokyo")


def generate(data_dir: Path, days: int) -> int:
    """``days`` of closed CSV hours; returns the rows written."""
    template = START.strftime("%Y-%m-%d")
    hours = []
    for hour in range(24):
        lines = [csv_line(air_conditioner(START + dt.timedelta(hours=hour, seconds=s))) for s in range(3600)]
        hours.append("\n".join(lines) + "\n")
    for day in range(days):
        date = START + dt.timedelta(days=day)
        stamp = date.strftime("%Y-%m-%d")
        for hour, body in enumerate(hours):
            name = f"{STEM}.csv.{date:%Y-%m-%d}_{hour:02d}.gz"
            (data_dir / name).write_bytes(gzip.compress(body.replace(template, stamp).encode(), compresslevel=1))
    return days * 86400


def timed(action):
    begin = time.perf_counter()
    result = action()
    return result, time.perf_counter() - begin


def compare_days(got, want) -> str:
    worst = max((abs(got.days[d].kwh - t.kwh) / max(t.kwh, 1e-12) for d, t in want.days.items()), default=0.0)
    same = sum(f"{got.days[d].kwh:.6f}" == f"{t.kwh:.6f}" for d, t in want.days.items())
    return f"{same}/{len(want.days)} days equal to 6 decimals, worst relative difference {worst:.1e}"


def report_figures(data_dir: Path) -> None:
    rows_report, rows_s = timed(lambda: meter_report(data_dir, STEM, "m", TZ, use_summaries=False))
    cold, cold_s = timed(lambda: meter_report(data_dir, STEM, "m", TZ))
    warm, warm_s = timed(lambda: meter_report(data_dir, STEM, "m", TZ))
    print(f"report, every row (as main):      {rows_s:7.2f} s  ({rows_report.rows / rows_s:,.0f} rows/s)")
    print(f"report, first run (backfills):    {cold_s:7.2f} s  ({cold_s / rows_s:.2f} x every row)")
    print(f"report, from summaries:           {warm_s:7.2f} s  ({rows_s / warm_s:,.0f} x faster than every row)")
    print(f"  summaries: {summaries_path(data_dir, STEM).stat().st_size / 1e6:.1f} MB; {compare_days(warm, rows_report)}")


TARIFF = """device: {address: "sim://"}
tariff:
  plans:
    - periods:
        - {name: night, price: 10, hours: "23:00-07:00"}
        - {name: weekend, price: 20, days: weekends}
        - {name: day, price: 30}
    - valid_from: "2025-07-01 12:00"
      periods:
        - {name: night, price: 11, hours: "23:00-07:00"}
        - {name: day, price: 31}
  surcharges:
""" + "".join(f"    - {{name: fuel, valid_from: 2025-{m:02d}-01, per_kwh: -{m / 10}}}\n" for m in range(1, 13)) + (
    "    - {name: renewable, valid_from: 2025-05-01, per_kwh: 3}\n")


def tariff_figures(data_dir: Path) -> None:
    tariff = parse_config(TARIFF).pricing()
    meter_report(data_dir, STEM, "m", TZ)  # the summaries, made once
    flat, priced = [], []
    for _ in range(5):  # interleaved: a busy machine slows both alike
        flat.append(timed(lambda: meter_report(data_dir, STEM, "m", TZ, tariff=Tariff.flat(25)))[1])
        priced.append(timed(lambda: meter_report(data_dir, STEM, "m", TZ, tariff=tariff)))
    flat_s = min(flat)
    priced, tariff_s = min(priced, key=lambda pair: pair[1])
    total = priced.total()
    print(f"report, flat price:               {flat_s:7.2f} s")
    print(f"report, time-of-use tariff:       {tariff_s:7.2f} s  ({tariff_s / flat_s:.2f} x the flat price's time)")
    print(f"  {total.kwh:,.1f} kWh, {total.cost:,.0f} in {len(total.periods)} periods")


def restore_figures(data_dir: Path) -> None:
    files_total = meter_report(data_dir, STEM, "m", TZ, use_summaries=False).total().watt_seconds
    state = data_dir / "energy.json"
    state.unlink(missing_ok=True)
    live = LiveState(Clock(), data_dir, {"m": STEM})
    _, known_s = timed(live.restore)
    print(f"energy, energy.json lost, summaries there: known after {known_s:.2f} s "
          f"({live.snapshot()['m'].energy_joules / files_total:.12f} x the files' total)")

    state.unlink()
    summaries_path(data_dir, STEM).unlink()  # as right after an upgrade
    live = LiveState(Clock(), data_dir, {"m": STEM})
    absent = low = 0
    begin = time.perf_counter()
    live.restore(background=True)
    while True:
        shown = live.snapshot()["m"]
        if not shown.energy_known:
            absent += 1  # /metrics and MQTT leave the energy out
        elif shown.energy_joules < files_total:
            low += 1
        else:
            break
        time.sleep(0.05)
    upgrade_s = time.perf_counter() - begin
    live.restorer.join()
    print(f"energy, after an upgrade (no summaries): known after {upgrade_s:.2f} s; "
          f"{absent} polls at 20/s saw it absent, {low} saw it below the files' total")


def retention_figures(data_dir: Path, days: int) -> None:
    first, last = (START + dt.timedelta(days=30)).date(), (START + dt.timedelta(days=59)).date()
    want = meter_report(data_dir, STEM, "m", TZ, first, last, use_summaries=False)
    deleted = 0
    for path in data_dir.glob(f"{STEM}.csv.*.gz"):
        if path.name < f"{STEM}.csv.{START + dt.timedelta(days=days // 2):%Y-%m-%d}":
            path.unlink()
            deleted += 1
    got, got_s = timed(lambda: meter_report(data_dir, STEM, "m", TZ, first, last))
    print(f"retention: {deleted} hour files deleted; --from {first} --to {last} answered in {got_s:.2f} s from "
          f"summaries, {len(got.days)} days; {compare_days(got, want)}")


def page_load(data_dir: Path, end: int) -> Tuple[float, float, int]:
    """The page's file work (two days of bars and today's kWh): a cold load, then the refresh after
    the next hour closes; and the hours whose rows that refresh read."""
    clock = FakeClock(dt.datetime(1970, 1, 1) + dt.timedelta(seconds=end - 3600 + 300))
    config = parse_config(f"general:\n  data_dir: {data_dir}\ndevice:\n  address: 'sim://'\n"
                          "http:\nreport:\n  timezone: Asia/Tokyo\n")
    view = EnergyView(config, LiveState(clock, data_dir, config.file_stems()), clock)
    _, cold = timed(view.summary)
    clock.advance(3600)
    read_before = view.hours_read
    _, refresh = timed(view.summary)
    return cold, refresh, view.hours_read - read_before


def page_figures(data_dir: Path, days: int) -> None:
    end = utc_epoch(START + dt.timedelta(days=days))
    one_year = min(page_load(data_dir, end) for _ in range(3))
    listing = min(timed(lambda: sources_for(data_dir, STEM))[1] for _ in range(3))
    names = [data_dir / f"{STEM}.csv.{START - dt.timedelta(days=365 * year) + dt.timedelta(hours=hour):%Y-%m-%d_%H}.gz"
             for year in range(1, 5) for hour in range(8760)]  # four more years of hour files' names before this one
    for path in names:
        path.touch()
    five_years = min(page_load(data_dir, end) for _ in range(3))
    listing_5 = min(timed(lambda: sources_for(data_dir, STEM))[1] for _ in range(3))
    for path in names:
        path.unlink()
    print(f"page, cold load: {one_year[0] * 1000:.0f} ms beside {days} days of files, {five_years[0] * 1000:.0f} ms "
          f"with 4 years more ({five_years[0] / one_year[0]:.2f} x)")
    print(f"page, hourly refresh: {one_year[1] * 1000:.0f} ms -> {five_years[1] * 1000:.0f} ms "
          f"({five_years[1] / one_year[1]:.2f} x), reading {one_year[2]} hour(s) of rows, not two days")
    print(f"  a folder listing (as main, twice per load): {listing * 1000:.0f} ms -> {listing_5 * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=366)
    parser.add_argument("--parts", default="report,tariff,energy,retention,page",
                        help="which figures, comma-separated (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        rows, made_s = timed(lambda: generate(data_dir, args.days))
        print(f"{args.days} days, {args.days * 24} hour files, {rows:,} rows, made in {made_s:.0f} s")
        parts = args.parts.split(",")
        if "report" in parts:
            report_figures(data_dir)
        if "tariff" in parts:
            tariff_figures(data_dir)
        if "energy" in parts:
            restore_figures(data_dir)
        if "page" in parts:  # before retention deletes half the files
            page_figures(data_dir, args.days)
        if "retention" in parts:
            retention_figures(data_dir, args.days)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
