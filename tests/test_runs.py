"""Runs: the detector against the simulator's traces, live against the report, a restart mid-run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import List, Optional

import pytest

from wattchecker_client.clock import FakeClock, time_zone, utc_epoch
from wattchecker_client.datadir import held_seconds
from wattchecker_client.live import LiveState
from wattchecker_client.saved import ENERGY_FILE
from wattchecker_client.protocol import Measurement
from wattchecker_client.report import meter_report, meter_rows
from wattchecker_client.runs import RunSettings, detect, resume_index, suggest
from wattchecker_client.simulator import played
from wattchecker_client.tariff import Tariff, utc_pricer
from wattchecker_client.traces import TRACES, trace
from wattchecker_client.writer import Writer

from .conftest import run_cli

START = dt.datetime(2026, 7, 1)
STEM = "wattchecker-data"
TOKYO = time_zone("Asia/Tokyo")
PRICE = utc_pricer(Tariff.flat(30.0), TOKYO)


def measurements(name: str, seconds: range) -> List[Measurement]:
    """What the simulator's meter measures over ``seconds`` of the trace, played from its second 0."""
    zero = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=utc_epoch(START) // trace(name).period * trace(name).period)
    return [played(zero + dt.timedelta(seconds=s), name) for s in seconds]


def write(data_dir: Path, ms: List[Measurement], live: Optional[LiveState] = None) -> None:
    """The rows on disk, told to ``live`` as the service's writer tells it (energy and the saved run state)."""
    writer = Writer(data_dir, {"m": STEM}, ("csv",), FakeClock(ms[0].time))
    writer.recover()
    writer.listener = live
    for m in ms:
        writer.add("m", m)
    writer.flush()


def file_runs(data_dir: Path, settings: RunSettings):
    problems: List[str] = []
    rows = list(meter_rows(data_dir, STEM, -(2**62), 2**62, problems))
    assert problems == []
    return detect(rows, settings, PRICE)


@pytest.mark.parametrize("name", list(TRACES))
def test_the_runs_of_each_trace_are_found_exactly_with_the_reports_kwh(tmp_path, name):
    """Each true run, to the second; a run holds its rows by the report's rule, so its kWh plus every
    row outside a run is the report's kWh."""
    tr = trace(name)
    ms = measurements(name, range(tr.period))
    write(tmp_path, ms)
    runs, going = file_runs(tmp_path, tr.settings)
    zero = utc_epoch(ms[0].time)
    assert [(r.start - zero, r.end - zero) for r in runs] == list(tr.runs) and going is None
    assert all(r.peak_watts == max(tr.watts[r.start - zero:r.end - zero]) for r in runs)
    rows = [(utc_epoch(m.time), float(f"{m.watts:.2f}")) for m in ms]
    outside = sum(w * held_seconds(nxt[0] - t if nxt else None)
                  for (t, w), nxt in zip(rows, rows[1:] + [None]) if not any(r.start <= t < r.end for r in runs))
    total = meter_report(tmp_path, STEM, "m", TOKYO).total()
    assert sum(r.watt_seconds for r in runs) + outside == pytest.approx(total.watt_seconds, rel=1e-12)
    assert sum(r.cost for r in runs) == pytest.approx(sum(r.kwh for r in runs) * 30.0, rel=1e-12)


@pytest.mark.parametrize("name", list(TRACES))
def test_live_events_equal_the_reports_runs_over_the_same_seconds(tmp_path, name):
    tr = trace(name)
    ms = measurements(name, range(tr.period + 600))  # into the next period: the last run's quiet wait too
    write(tmp_path, ms)
    live = LiveState(FakeClock(START), tmp_path / "elsewhere", {"m": STEM}, runs={"m": tr.settings}, price=PRICE)
    for m in ms:
        live.reading("m", m)
    state = live.snapshot()["m"]
    runs, going = file_runs(tmp_path, tr.settings)
    assert [run for _, run in state.recent_runs] == runs and state.runs_finished == len(runs) == len(tr.runs)
    assert [n for n, _ in state.recent_runs] == list(range(1, len(runs) + 1))
    assert state.run == going


@pytest.mark.parametrize("saved", [True, False], ids=["from energy.json", "from the files alone"])
@pytest.mark.parametrize("into", [0.02, 0.5, 0.97])
def test_a_restart_in_the_middle_of_a_wash_neither_loses_nor_splits_it(tmp_path, saved, into):
    tr = trace("wash")
    first_start, first_end = tr.runs[0]
    cut = first_start + int((first_end - first_start) * into)  # the service stops that far into the first wash
    ms = measurements("wash", range(tr.period))
    zero = utc_epoch(ms[0].time)
    before, after = ms[:cut], ms[cut + 45:]  # 45 s without rows while it restarts
    clock = FakeClock(before[-1].time)
    first = LiveState(clock, tmp_path, {"m": STEM}, runs={"m": tr.settings}, price=PRICE)
    first.restore({"m": None})
    for m in before:
        first.reading("m", m)
    assert first.snapshot()["m"].run.start == zero + first_start
    write(tmp_path, before, first)
    if saved:
        first.save(force=True)  # as at a clean stop: energy.json holds the detector's state
        assert json.loads((tmp_path / ENERGY_FILE).read_text())["meters"]["m"]["runs"]["start"] == zero + first_start

    again = LiveState(clock, tmp_path, {"m": STEM}, runs={"m": tr.settings}, price=PRICE)
    again.restore({"m": before[-1].time})
    restored = again.snapshot()["m"]
    assert restored.run == first.snapshot()["m"].run  # the same run, its kWh so far included
    for m in after:
        again.reading("m", m)
    write(tmp_path, after)
    finished = [run for _, run in again.snapshot()["m"].recent_runs]
    runs, _ = file_runs(tmp_path, tr.settings)
    assert finished == runs
    assert [(r.start - zero, r.end - zero) for r in finished] == list(tr.runs)
    assert first.snapshot()["m"].runs_finished == 0 and again.snapshot()["m"].runs_finished == 2


def test_a_restart_after_a_finished_run_shows_it_but_does_not_count_it_again(tmp_path):
    tr = trace("kettle")
    end = tr.runs[0][1] + 600
    ms = measurements("kettle", range(end))
    write(tmp_path, ms)
    live = LiveState(FakeClock(ms[-1].time), tmp_path, {"m": STEM}, runs={"m": tr.settings}, price=PRICE)
    live.restore({"m": ms[-1].time})
    state = live.snapshot()["m"]
    assert state.run is None and state.runs_finished == 0
    assert [number for number, _ in state.recent_runs] == [0]


def test_resume_index_is_where_a_fresh_detector_agrees_with_the_whole_history():
    tr = trace("wash")
    rows = list(enumerate(tr.watts))
    whole, going = detect(rows, tr.settings)
    for cut in range(0, len(rows), 997):
        index = resume_index(rows[:cut], tr.settings)
        if index is None:
            continue
        tail, _ = detect(rows[index:], tr.settings)
        assert tail == [r for r in whole if r.start >= rows[index][0]]


def test_thresholds_suggested_from_a_wash_find_its_runs():
    tr = trace("wash")
    rows = list(enumerate(tr.watts))
    suggested = suggest(rows)
    assert 240 < suggested.stop_after <= 600
    runs, _ = detect(rows, suggested)
    assert [(r.start, r.end) for r in runs] == list(tr.runs)


@pytest.mark.process
def test_report_runs_prints_the_table_and_writes_csv(tmp_path):
    tr = trace("kettle")
    write(tmp_path / "data", measurements("kettle", range(tr.period)))
    config = tmp_path / "config.yaml"
    config.write_text("general:\n  data_dir: data\ndevice:\n  address: sim://\n"
                      "  runs: {start_watts: 100, stop_watts: 50, stop_after: 30}\nreport:\n  price: 30\n")
    result = run_cli("report", "--config", str(config), "--runs-csv", str(tmp_path / "runs.csv"))
    assert result.returncode == 0, result.stderr
    runs, _ = file_runs(tmp_path / "data", tr.settings)
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert lines[0] == "meter,start,end,seconds,kwh,cost,peak_w" and len(lines) == 1 + len(runs)
    for line, run in zip(lines[1:], runs):
        fields = line.split(",")
        assert int(fields[3]) == run.seconds and fields[4] == f"{run.kwh:.6f}" and fields[5] == f"{run.cost:.4f}"
        start = dt.datetime.fromtimestamp(run.start, TOKYO).strftime("%Y-%m-%d %H:%M:%S")
        assert start in result.stdout
    assert "suggested from this history: runs: {start_watts:" in result.stdout


def test_metrics_count_runs_time_the_one_going_on_and_show_todays_cost_at_the_tariff(tmp_path):
    """A kettle through a real Writer, LiveState and the page's EnergyView, scraped by the real collector."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from wattchecker_client.config import parse_config
    from wattchecker_client.dashboard import EnergyView, history_seconds
    from wattchecker_client.metrics import LiveCollector, registry_for

    tr = trace("kettle")
    data_dir = tmp_path / "data"
    config = parse_config(f"general:\n  data_dir: {data_dir}\n  data_buffer_size: 60\ndevice:\n  address: sim://\n"
                          "  runs: {start_watts: 100, stop_watts: 50, stop_after: 30}\nhttp:\ntariff:\n  plans:\n"
                          "    - periods:\n        - {name: night, price: 20, hours: \"23:00-07:00\"}\n"
                          "        - {name: day, price: 30}\n")
    ms = measurements("kettle", range(tr.runs[1][0] + 60))  # two kettles boiled, the third a minute in
    clock = FakeClock(ms[0].time)
    writer = Writer(data_dir, {"wattchecker": STEM}, ("csv",), clock, buffer_seconds=60)
    writer.recover()
    live = LiveState(clock, data_dir, {"wattchecker": STEM}, history_seconds=history_seconds(config),
                     runs={"wattchecker": config.devices[0].runs}, price=utc_pricer(config.pricing(), TOKYO))
    live.restore({"wattchecker": None})
    view = EnergyView(config, live, clock)
    for m in ms:
        writer.add("wattchecker", m)
        live.reading("wattchecker", m)
        clock.advance(1)
    writer.flush()
    registry = registry_for(LiveCollector(live, lambda: {}, writer, None, clock, today=view.summary))
    families = {f.name: f for f in text_string_to_metric_families(prometheus_client.generate_latest(registry).decode())}

    def value(name: str) -> float:
        (s,) = [s for s in families[name].samples if s.labels.get("meter") == "wattchecker" and
                not s.name.endswith("_created")]
        return s.value

    assert value("wattchecker_runs") == 1  # the first kettle; the second is 60 s in
    # 60 readings of the second kettle: the last one's hold is known at the next
    assert value("wattchecker_run_seconds") == live.snapshot()["wattchecker"].run.seconds == 59
    day = meter_report(data_dir, STEM, "m", TOKYO, tariff=config.pricing()).days
    today = dt.datetime.fromtimestamp(utc_epoch(ms[-1].time), TOKYO).date()
    assert value("wattchecker_cost_today") == pytest.approx(day[today].cost, abs=1e-4) and day[today].cost > 0


@pytest.mark.parametrize("use_summaries", [True, False])
def test_standby_is_the_mean_of_the_quarter_hours_at_rest_and_its_share_of_the_day(tmp_path, use_summaries):
    """The noisy standby (3-9 W, spikes to 15 W) between two evenings of TV: quarter hours touched by a run
    are left out whole; the rest give the level, the same from the summaries as from every row."""
    tr = trace("standby")
    ms = measurements("standby", range(tr.period))
    write(tmp_path, ms)
    rows = [(utc_epoch(m.time), float(f"{m.watts:.2f}")) for m in ms]
    quarters: dict = {}
    for (t, w), nxt in zip(rows, rows[1:] + [None]):
        held = held_seconds(nxt[0] - t if nxt else None)
        q = quarters.setdefault(t // 900, [0.0, 0, 0.0])
        q[0], q[1], q[2] = q[0] + w * held, q[1] + held, max(q[2], w)
    by_day: dict = {}
    for q, (ws, s, peak) in quarters.items():
        day = dt.datetime.fromtimestamp(q * 900, TOKYO).date()
        total = by_day.setdefault(day, [0.0, 0, 0.0, 0])
        total[0], total[1] = total[0] + ws, total[1] + s
        if peak < tr.settings.stop_watts:
            total[2], total[3] = total[2] + ws, total[3] + s
    days = meter_report(tmp_path, STEM, "m", TOKYO, use_summaries=use_summaries,
                        resting_below=tr.settings.stop_watts).days
    assert sorted(days) == sorted(by_day)
    for day, (ws, s, rest_ws, rest_s) in by_day.items():
        assert 3 < days[day].standby_watts < 9
        assert days[day].standby_watts == pytest.approx(rest_ws / rest_s, rel=1e-9)
        assert days[day].standby_share == pytest.approx(rest_ws / rest_s * s / ws, rel=1e-9)


@pytest.mark.parametrize("quiet", [0, 1, 120, 121])
def test_a_run_at_the_end_of_the_rows_is_going_on_until_its_quiet_wait_is_over(quiet):
    """It ends at the first quiet row 120 s after its last working row's hold: the 121st quiet second."""
    settings = RunSettings(30.0, 10.0, 120)
    rows = [(t, 2.0) for t in range(0, 200)] + [(t, 80.0) for t in range(200, 260)]
    rows += [(t, 2.0) for t in range(260, 260 + quiet)]
    runs, going = detect(rows, settings)
    if quiet > 120:
        assert going is None and [(r.start, r.end, r.watt_seconds) for r in runs] == [(200, 260, 80.0 * 60)]
    else:
        assert runs == [] and (going.start, going.end, going.watt_seconds) == (200, 260, 80.0 * 60)
