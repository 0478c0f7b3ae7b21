"""The report: exact kWh for known loads, gaps, DST days, meters, formats, broken files, chart, SQL view."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wattchecker_client.clock import FakeClock
from wattchecker_client.protocol import Measurement
from wattchecker_client.report import bigquery_view_sql, meter_report, time_zone
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.writer import Writer

from .conftest import Emulator, run_cli

UTC = time_zone("UTC")
TOKYO = time_zone("Asia/Tokyo")
BERLIN = time_zone("Europe/Berlin")


def constant(start: dt.datetime, seconds: int, watts: float, step: int = 1) -> list:
    return [Measurement(start + dt.timedelta(seconds=s), 100.0, 1000.0, watts) for s in range(0, seconds, step)]


def write(data_dir: Path, measurements, formats=("csv", "json"), meter="wattchecker", stem="wattchecker-data"):
    """Through the real writer: closed .gz hours, and the last hour left current."""
    data_dir.mkdir(parents=True, exist_ok=True)
    writer = Writer(data_dir, {meter: stem}, formats, FakeClock(measurements[0].time))
    writer.recover()
    for m in measurements:
        writer.add(meter, m)
    writer.flush()


def day(report, date: str):
    return report.days[dt.date.fromisoformat(date)]


def test_a_constant_load_gives_exact_kwh_cost_coverage_and_peak(tmp_path):
    write(tmp_path, constant(dt.datetime(2026, 7, 1, 15, 0), 86400, 100.0))  # one Tokyo day: 15:00Z..15:00Z
    report = meter_report(tmp_path, "wattchecker-data", "m", TOKYO)
    assert list(report.days) == [dt.date(2026, 7, 2)]
    d = day(report, "2026-07-02")
    assert d.kwh == pytest.approx(2.4, abs=1e-12) and d.hours_covered == 24.0 and d.peak_watts == 100.0
    assert len(report.hourly_wh) == 24 and all(wh == pytest.approx(100.0) for wh in report.hourly_wh.values())


def test_gaps_are_missing_coverage_not_filled_in(tmp_path):
    rows = constant(dt.datetime(2026, 7, 1), 86400, 200.0)
    rows = [m for m in rows if not 10 <= m.time.hour < 12]  # the meter was away for two hours
    rows = [m for i, m in enumerate(rows) if m.time.hour != 20 or i % 3 == 0]  # one hour sampled every 3 s
    write(tmp_path, rows)
    d = day(meter_report(tmp_path, "wattchecker-data", "m", UTC), "2026-07-01")
    assert d.hours_covered == pytest.approx(22.0)
    assert d.kwh == pytest.approx(200 * 22 / 1000)


def test_dst_days_are_23_and_25_hours_long(tmp_path):
    spring = constant(dt.datetime(2026, 3, 28, 22, 0), 2 * 86400, 50.0)  # around 2026-03-29 in Berlin
    autumn = constant(dt.datetime(2026, 10, 24, 21, 0), 2 * 86400, 50.0)  # around 2026-10-25
    write(tmp_path / "spring", spring)
    write(tmp_path / "autumn", autumn)
    spring_day = day(meter_report(tmp_path / "spring", "wattchecker-data", "m", BERLIN), "2026-03-29")
    autumn_day = day(meter_report(tmp_path / "autumn", "wattchecker-data", "m", BERLIN), "2026-10-25")
    assert (spring_day.hours_covered, spring_day.kwh) == (23.0, pytest.approx(50 * 23 / 1000))
    assert (autumn_day.hours_covered, autumn_day.kwh) == (25.0, pytest.approx(50 * 25 / 1000))


def test_csv_only_and_json_only_data_dirs_agree(tmp_path):
    rows = [air_conditioner(dt.datetime(2026, 7, 1, 3) + dt.timedelta(seconds=s)) for s in range(7200)]
    write(tmp_path / "csv", rows, formats=("csv",))
    write(tmp_path / "json", rows, formats=("json",))
    from_csv = day(meter_report(tmp_path / "csv", "wattchecker-data", "m", TOKYO), "2026-07-01")
    from_json = day(meter_report(tmp_path / "json", "wattchecker-data", "m", TOKYO), "2026-07-01")
    exact = sum(m.watts for m in rows) / 3_600_000
    assert from_json.kwh == pytest.approx(exact, rel=1e-12)
    assert from_csv.kwh == pytest.approx(exact, abs=7200 * 0.005 / 3_600_000)  # W rounded to 0.01
    assert from_csv.hours_covered == from_json.hours_covered == 2.0


def test_files_from_a_real_daemon_run(simulator, daemons, tmp_path):
    """The writer's own files from a fast-clock simulator run, against the rows themselves."""
    from .conftest import run_until_closed_hours
    from .datacheck import check_data_dir

    _, data_dir = run_until_closed_hours(simulator, daemons, tmp_path, "7", 2)
    seconds = sorted(check_data_dir(data_dir, 7)["json"])
    report = meter_report(data_dir, "wattchecker-data", "m", UTC)
    expected_ws, expected_cover = 0.0, 0
    for a, b in zip(seconds, seconds[1:] + [None]):
        step = (b - a).total_seconds() if b else None
        held = step if step is not None and step <= 5 else 1
        expected_ws += air_conditioner(a, 7).watts * held  # the report reads the JSON's W where both formats hold it
        expected_cover += held
    total = report.total()
    assert total.watt_seconds == pytest.approx(expected_ws, rel=1e-9)
    assert total.covered_seconds == expected_cover
    assert report.rows == len(seconds)


def test_several_meters_each_get_their_days(tmp_path):
    write(tmp_path, constant(dt.datetime(2026, 7, 1), 3600, 100.0), meter="aircon", stem="wattchecker-data-aircon")
    write(tmp_path, constant(dt.datetime(2026, 7, 1), 3600, 40.0), meter="fridge", stem="wattchecker-data-fridge")
    assert meter_report(tmp_path, "wattchecker-data-aircon", "aircon", UTC).total().kwh == pytest.approx(0.1)
    assert meter_report(tmp_path, "wattchecker-data-fridge", "fridge", UTC).total().kwh == pytest.approx(0.04)


def test_a_truncated_gz_is_reported_skipped_and_the_rest_counted(tmp_path):
    write(tmp_path, constant(dt.datetime(2026, 7, 1), 3 * 3600 + 10, 100.0), formats=("csv",))
    broken = tmp_path / "wattchecker-data.csv.2026-07-01_01.gz"
    broken.write_bytes(broken.read_bytes()[:200])
    summaries = tmp_path / "wattchecker-data.summaries.jsonl"
    assert meter_report(tmp_path, "wattchecker-data", "m", UTC).problems == []  # summarized at close
    summaries.unlink()  # as after an upgrade: the hours are read from their files
    report = meter_report(tmp_path, "wattchecker-data", "m", UTC)
    assert report.problems == [f"{broken.name}: damaged, skipped (EOFError: "
                               "Compressed file ended before the end-of-stream marker was reached)"]
    assert not broken.exists() and (tmp_path / "failed" / broken.name).exists()  # moved aside, said once
    assert meter_report(tmp_path, "wattchecker-data", "m", UTC).problems == []
    d = day(report, "2026-07-01")
    assert d.hours_covered == pytest.approx(2 + 10 / 3600)
    assert d.kwh == pytest.approx(100 * (2 + 10 / 3600) / 1000)


def test_a_truncated_gz_falls_back_to_the_other_format(tmp_path):
    write(tmp_path, constant(dt.datetime(2026, 7, 1), 2 * 3600, 100.0))
    broken = tmp_path / "wattchecker-data.csv.2026-07-01_00.gz"
    broken.write_bytes(broken.read_bytes()[:200])
    (tmp_path / "wattchecker-data.summaries.jsonl").unlink()  # as after an upgrade: read from the files
    report = meter_report(tmp_path, "wattchecker-data", "m", UTC)
    assert len(report.problems) == 1
    assert day(report, "2026-07-01").hours_covered == pytest.approx(2.0)


def config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"general:\n  data_dir: {json.dumps(str(tmp_path / 'data'))}\n"
                    f"device:\n  address: sim://\n{extra}")
    return path


@pytest.mark.process
def test_report_command_prints_the_table_and_writes_csv(tmp_path):
    write(tmp_path / "data", constant(dt.datetime(2026, 7, 1, 15), 2 * 86400, 125.0))
    config = config_file(tmp_path, "report:\n  timezone: Asia/Tokyo\n  price: 30\n  currency: JPY\n")
    result = run_cli("report", "--config", str(config), "--from", "2026-07-02", "--to", "2026-07-02",
                     "--csv", str(tmp_path / "days.csv"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "meter wattchecker: Asia/Tokyo days, 30 JPY/kWh",
        "date              kWh     cost JPY   hours    peak W  standby W  stby %",
        "2026-07-02      3.000        90.00    24.0     125.0          -       -",  # never at rest (runs.stop_watts)
        "total           3.000        90.00    24.0     125.0          -       -",
    ]
    assert (tmp_path / "days.csv").read_text() == (
        "date,meter,kwh,cost,hours_covered,peak_w,standby_w,standby_share\n"
        "2026-07-02,wattchecker,3.000000,90.0000,24.0000,125.0,,\n")


@pytest.mark.process
def test_png_without_matplotlib_says_how_to_install_it(tmp_path):
    write(tmp_path / "data", constant(dt.datetime(2026, 7, 1), 3600, 100.0))
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from wattchecker_client.cli import main\n"
            f"sys.exit(main(['report', '--config', {str(config_file(tmp_path))!r}, '--png', 'x.png']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "total           0.100" in result.stdout  # the table still works
    assert result.stderr.strip() == (
        "wattchecker-client: error: --png needs matplotlib: pip install 'wattchecker-client[report]'")


@pytest.mark.process
def test_the_chart_renders(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [air_conditioner(dt.datetime(2026, 7, 1, 15) + dt.timedelta(seconds=s)) for s in range(0, 3 * 86400, 1)]
    write(tmp_path / "data", rows, formats=("csv",))
    png = tmp_path / "chart.png"
    result = run_cli("report", "--config", str(config_file(tmp_path)), "--png", str(png), timeout=120)
    assert result.returncode == 0, result.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert result.stdout.splitlines()[-1] == f"chart: {png}"


def test_the_bigquery_view_gives_the_local_reports_kwh(emulator, tmp_path):
    from .test_uploader import Uploader, BigQueryTarget, config_for

    emulator.start()
    rows = constant(dt.datetime(2026, 7, 1, 14), 3 * 3600, 80.0)
    rows = [m for m in rows if m.time.hour != 15] + constant(dt.datetime(2026, 7, 1, 17), 3600, 300.0, step=2)
    write(tmp_path, sorted(rows, key=lambda m: m.time), formats=("json",))
    config = config_for(emulator, tmp_path)
    uploader = Uploader(tmp_path, BigQueryTarget(config.bigquery, False, retry_deadline=0.5), FakeClock())
    writer = Writer(tmp_path, {"wattchecker": "wattchecker-data"}, ["json"], FakeClock())
    writer.recover()
    for fs in writer.all_sets():
        fs.close_current()
    uploader.queue(uploader.backlog())
    while uploader.step():
        pass
    local = meter_report(tmp_path, "wattchecker-data", "m", TOKYO)
    table = f"{Emulator.PROJECT}.wattchecker.power"
    sql = bigquery_view_sql(table, "Asia/Tokyo", 25.0, several_meters=False)
    client = emulator.client()
    client.query(sql).result()
    got = [tuple(r.values()) for r in client.query(
        f"SELECT day, kwh, cost, hours_covered, peak_w FROM `{Emulator.PROJECT}.wattchecker.wattchecker_daily` "
        "ORDER BY day").result()]
    expected = [(d, t.kwh, t.kwh * 25, t.hours_covered, t.peak_watts) for d, t in sorted(local.days.items())]
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert g[0] == e[0]
        assert g[1:] == pytest.approx(e[1:])


@pytest.mark.parametrize(
    "second_step, held",
    [(4, 4), (5, 5), (6, 1), (10, 1)],
    ids=["4s-counts-in-full", "5s-counts-in-full", "6s-is-a-gap", "10s-is-a-gap"],
)
def test_the_gap_cap_is_5_seconds_inclusive(tmp_path, second_step, held):
    """100 W, then 200 W held for a step at the cap's edge, then 300 W after a 6 s gap."""
    start = dt.datetime(2026, 7, 1, 0, 0, 0)
    rows = [Measurement(start, 100.0, 1000.0, 100.0),
            Measurement(start + dt.timedelta(seconds=1), 100.0, 1000.0, 200.0),
            Measurement(start + dt.timedelta(seconds=1 + second_step), 100.0, 1000.0, 300.0),
            Measurement(start + dt.timedelta(seconds=1 + second_step + 6), 100.0, 1000.0, 400.0)]
    write(tmp_path, rows)
    total = meter_report(tmp_path, "wattchecker-data", "m", UTC).total()
    # 100 W for its 1 s step, 200 W for ``held``, 300 W for one second before the gap, 400 W last: 1 s
    assert total.watt_seconds == 100 + 200 * held + 300 + 400
    assert total.covered_seconds == 1 + held + 1 + 1


def test_seconds_covered_per_hour_mark_the_first_and_the_current_hour(tmp_path):
    write(tmp_path, constant(dt.datetime(2026, 7, 1, 0, 30), 6000, 100.0))  # 00:30:00 .. 02:09:59
    report = meter_report(tmp_path, "wattchecker-data", "m", TOKYO)
    hours = [dt.datetime(2026, 7, 1, 9), dt.datetime(2026, 7, 1, 10), dt.datetime(2026, 7, 1, 11)]
    assert report.hourly_seconds == dict(zip(hours, [1800, 3600, 600]))
    assert report.hourly_wh == pytest.approx(dict(zip(hours, [50.0, 100.0, 100 / 6])))


def drawn(report, days):
    """The chart's two panels, drawn on a real figure (not saved): what the PNG will show."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from wattchecker_client.chart import draw_days, draw_hours

    fig, (top, bottom) = plt.subplots(2, 1)
    draw_days(top, report, days, TOKYO, 25.0, "JPY")
    draw_hours(bottom, report, days, "Asia/Tokyo")
    hours = [(mdates.num2date(p.get_x()).replace(tzinfo=None), p.get_width(), p.get_height(), bool(p.get_hatch()))
             for p in bottom.patches]
    day_bars = [(p.get_width(), bool(p.get_hatch())) for p in top.patches]
    limits = top.get_xlim(), [mdates.num2date(x).replace(tzinfo=None) for x in bottom.get_xlim()]
    legend = [t.get_text() for t in bottom.get_legend().get_texts()]
    plt.close(fig)
    return hours, day_bars, limits, legend


def test_a_short_range_draws_hour_bars_partial_ends_and_a_sane_day_bar(tmp_path):
    write(tmp_path, constant(dt.datetime(2026, 7, 2, 0, 30), 9001, 400.0))  # 09:30:00 .. 12:00:00 JST
    report = meter_report(tmp_path, "wattchecker-data", "m", TOKYO)
    hours, day_bars, (day_range, hour_range), legend = drawn(report, sorted(report.days))
    hour = dt.datetime(2026, 7, 2, 9)
    assert [(h, wh, partial) for h, _, wh, partial in sorted(hours)] == [
        (hour, pytest.approx(200.0), True),  # half an hour of data: partial, not a dip
        (hour + dt.timedelta(hours=1), pytest.approx(400.0), False),
        (hour + dt.timedelta(hours=2), pytest.approx(400.0), False),
        (hour + dt.timedelta(hours=3), pytest.approx(400 / 3600), True),  # the current hour: one reading
    ]
    assert all(width == pytest.approx(0.85 / 24) for _, width, _, _ in hours)  # bars an hour wide, not a line
    assert hour_range == [dt.datetime(2026, 7, 2), dt.datetime(2026, 7, 2, 23, 59)]  # the whole local day
    assert day_bars == [(0.7, True)] and day_range == (-3.5, 3.5)  # one slot of seven, marked partial
    assert legend == ["energy per hour (Wh)", "partial hour (data for part of it)"]


def test_sixty_days_keep_one_slot_per_day_and_hour():
    from wattchecker_client.report import DayTotal, MeterReport

    report = MeterReport("m")  # sixty full days at 50 W, as the integrator would total them
    first = dt.date(2026, 5, 1)
    for n in range(60):
        day = first + dt.timedelta(days=n)
        report.days[day] = DayTotal(day, watt_seconds=50 * 86400, covered_seconds=86400, peak_watts=50)
        for h in range(24):
            hour = dt.datetime.combine(day, dt.time(h))
            report.hourly_wh[hour], report.hourly_seconds[hour] = 50.0, 3600
    hours, day_bars, (day_range, hour_range), legend = drawn(report, sorted(report.days))
    assert day_bars == [(0.7, False)] * 60 and day_range == (-0.5, 59.5)
    assert len(hours) == 60 * 24 and all(width == pytest.approx(1 / 24) for _, width, _, _ in hours)
    assert hour_range == [dt.datetime(2026, 5, 1), dt.datetime(2026, 6, 29, 23, 59)]
    assert legend == ["energy per hour (Wh)"]
