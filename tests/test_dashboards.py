"""dashboards/: every panel's query run against the real servers, the alert rules through promtool.

The PromQL goes to a real Prometheus scraping the real service; the InfluxQL
to a real influxd the same service uploaded its files to. The pictures in
docs/ are drawn from these results (WATTCHECKER_WRITE_DOCS=1 writes them there).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Dict, List, Tuple

import pytest
import yaml

from tests.conftest import ROOT, free_port, wait_for, write_config
from wattchecker_client.clock import Clock, time_zone, utc_epoch
from wattchecker_client.report import meter_report

from .dashboard_picture import render
from .influx import influxd, irregular_seconds, write_seconds  # noqa: F401  (influxd: a fixture)

DASHBOARDS = ROOT / "dashboards"
TZ = "Asia/Tokyo"
PRICE = "25"
HOURS = 26
DOCS_RUN_SECONDS = 240
PANELS = {"Power", "Voltage", "Current", "Today's kWh", "Today's cost", "kWh per day", "Relay and over-power latch",
          "Readings lost", "Upload backlog", "Link"}


def dashboard(name: str) -> dict:
    return json.loads((DASHBOARDS / f"wattchecker-{name}.json").read_text())


def targets(board: dict) -> List[Tuple[dict, dict]]:
    return [(panel, target) for panel in board["panels"] for target in panel["targets"]]


@pytest.mark.process
def test_promtool_checks_the_alert_rules_and_runs_a_test_case_for_each():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("needs promtool: apt-get install prometheus")
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=DASHBOARDS, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS: 4 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=DASHBOARDS, capture_output=True,
                          text=True, timeout=60)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    rules = yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())["groups"][0]["rules"]
    cases = yaml.safe_load((DASHBOARDS / "alerts_test.yml").read_text())["tests"]
    tested = {check["alertname"] for case in cases for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert tested == {r["alert"] for r in rules} == {"WattcheckerMeterSilent", "WattcheckerOverPowerLatched",
                                                     "WattcheckerUploadBacklog", "WattcheckerClockNotTrusted"}


@pytest.mark.parametrize("name, kind", [("prometheus", "prometheus"), ("influxdb", "influxdb")])
def test_each_dashboard_is_a_grafana_10_model_with_a_device_variable_and_every_panel(name, kind):
    board = dashboard(name)
    assert board["schemaVersion"] >= 38  # Grafana 10.0's
    assert {v["name"]: v["type"] for v in board["templating"]["list"]}["device"] == "query"
    assert {v["name"]: v for v in board["templating"]["list"]}["datasource"]["query"] == kind
    titles = {p["title"].split(" (")[0].replace(" per hour", "").split(":")[0] for p in board["panels"]}
    assert PANELS <= titles, PANELS - titles
    for panel, target in targets(board):
        assert panel["datasource"] == target["datasource"] == {"type": kind, "uid": "${datasource}"}
        query = target.get("expr") or target.get("query")
        assert "$device" in query or "dropped" in query or "queued" in query, (panel["title"], query)


# --- the queries against real servers -------------------------------------------------------------


def promql(expr: str, span: str) -> str:
    """A panel's PromQL with Grafana's variables set: every meter, a Japanese day, ``span`` of range."""
    for name, value in {"$__rate_interval": "15s", "$__range": span, "$device": ".*", "$day_start": "-15h",
                        "$price": PRICE}.items():
        expr = expr.replace(name, value)
    assert not re.search(r"\$\w", expr), expr
    return expr


def influxql(query: str, start: float, end: float, interval: str = "10m") -> str:
    """A panel's InfluxQL with Grafana's variables set as Grafana sets them for [start, end]."""
    values = {"$timeFilter": f"time >= {int(start * 1000)}ms and time <= {int(end * 1000)}ms",
              "$__interval": interval, "$device": ".*", "$timezone": TZ, "$price": PRICE}
    for name, value in values.items():
        query = query.replace(name, value)
    assert not re.search(r"\$\w", query), query
    return query


def grafana_range(panel: dict, start: float, end: float, today_start: float) -> Tuple[float, float, str]:
    """The range and ``$__interval`` Grafana gives a panel of a dashboard showing [start, end]: its own
    ``timeFrom`` (now/d: today; 1h) and ``timeShift``."""
    shift = {"1h": 3600, "1m": 60}.get(panel.get("timeShift"), 0)
    since = {"now/d": today_start, "1h": end - 3600}.get(panel.get("timeFrom"), start)
    return since - shift, end - shift, "10s" if panel.get("timeFrom") == "1h" else "10m"


def prometheus_range(port: int, expr: str, start: float, end: float, step: str) -> list:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query_range?{params}", timeout=30) as answer:
        return json.loads(answer.read())["data"]["result"]


def influx_series(result: list) -> list:
    """(legend, [(t, value)]) per series, Grafana's ``$tag_name`` alias, one per value column."""
    out = []
    for series in result:
        name = series.get("tags", {}).get("name", series["name"])
        for column in range(1, len(series["columns"])):
            suffix = f" {series['columns'][column]}" if len(series["columns"]) > 2 else ""
            out.append((name + suffix, [(row[0], row[column]) for row in series["values"] if row[column] is not None]))
    return out


@pytest.mark.process
def test_every_dashboard_query_returns_data_and_the_days_equal_the_report(influxd, tmp_path, daemons):
    from tests.test_web import Prometheus

    now = Clock().now()
    start = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=HOURS)
    data, reference = tmp_path / "data", tmp_path / "reference"
    # the hours before the service starts: its backlog; JSON only, as the report reads a CSV's rounded watts
    # where both formats hold a second until the data folder's union reader lands (issue 25)
    write_seconds(data, irregular_seconds(HOURS), start, formats=("json",))
    shutil.copytree(data, reference)
    closed_rows = sum(1 for _ in irregular_seconds(HOURS))
    db = influxd.create_database("dashboards")
    port = free_port()
    config = write_config(tmp_path / "config.yaml", data, "sim://?model=btwattch2")
    config.write_text(config.read_text() + "  model: btwattch2\n" + f"http:\n  listen: 127.0.0.1:{port}\n"
                      f"influxdb:\n  url: {influxd.url}\n  database: {db}\n  live: true\n")
    daemon = daemons(config, tmp_path)
    began = Clock().now()
    with Prometheus(tmp_path, port) as prom:
        # the backlog uploaded, then live points beyond it
        wait_for(lambda: influxd.count(db) > closed_rows + 3, 90, interval=0.5, what="the backlog and live points")
        prom_results = {}
        for panel, target in targets(dashboard("prometheus")):
            expr = promql(target["expr"], "1h")
            found = wait_for(lambda: prom.query(expr), 90, interval=0.5, what=f"{panel['title']}: {expr}")
            prom_results.setdefault(panel["id"], []).append(found)
        if os.environ.get("WATTCHECKER_WRITE_DOCS"):  # a picture worth looking at: a few minutes of the service
            time.sleep(DOCS_RUN_SECONDS)
        end = Clock().now()
        pictures = prometheus_pictures(prom.port, utc_epoch(began), utc_epoch(end) + 1)
    assert daemon.stop() == 0

    edge = utc_epoch(end) + 1
    tz = time_zone(TZ)
    local_midnight = dt.datetime.fromtimestamp(edge, tz).replace(hour=0, minute=0, second=0)
    today_start = local_midnight.timestamp() if (edge - local_midnight.timestamp()) > 3600 else edge - 3 * 3600
    influx_results: Dict[int, list] = {}
    board = dashboard("influxdb")
    for panel, target in targets(board):
        since, until, interval = grafana_range(panel, utc_epoch(start), edge, today_start)
        query = influxql(target["query"], since, until, interval)
        series = influxd.query(query, db)
        assert series and any(s["values"] for s in series), (panel["title"], query)
        influx_results[panel["id"]] = influx_series(series)
    devices = influxd.query(board["templating"]["list"][1]["query"], db)
    assert len(devices[0]["values"]) == 1  # the one meter's id: the $device variable's choices

    # kWh per day: the panel's query equals `report` for every local day of the files before today
    per_day = next(p for p in board["panels"] if p["title"] == "kWh per day")
    bars = influxd.query(influxql(per_day["targets"][0]["query"], utc_epoch(start), edge), db)[0]["values"]
    influx_days = {dt.datetime.fromtimestamp(t, tz).date(): kwh for t, kwh in bars}
    report = meter_report(reference, "wattchecker-data", "wattchecker", tz)
    days = [day for day in report.days if day < local_midnight.date()]
    assert days
    for day in days:
        assert influx_days[day] == pytest.approx(report.days[day].kwh, abs=1e-6), day

    docs = ROOT / "docs" if os.environ.get("WATTCHECKER_WRITE_DOCS") else tmp_path
    render(board, influx_results, docs / "dashboard-influxdb.png", tz, "the panels' InfluxQL results, from this test")
    render(dashboard("prometheus"), pictures, docs / "dashboard-prometheus.png", tz,
           "the panels' PromQL results, from this test")
    assert (docs / "dashboard-influxdb.png").stat().st_size > 10_000
    assert (docs / "dashboard-prometheus.png").stat().st_size > 10_000


def prometheus_pictures(port: int, start: float, end: float) -> Dict[int, list]:
    """Each Prometheus panel's series over the service's run, as Grafana would chart them."""
    results: Dict[int, list] = {}
    for panel, target in targets(dashboard("prometheus")):
        since, step = (start // 86400 * 86400, "86400") if panel["title"] == "kWh per day" else (start, "1")
        span = f"{max(1, int(end - start))}s"
        for series in prometheus_range(port, promql(target["expr"], span), since, end, step):
            legend = re.sub(r"\{\{(\w+)\}\}", lambda m: series["metric"].get(m.group(1), ""), target["legendFormat"])
            results.setdefault(panel["id"], []).append((legend, [(float(t), float(v)) for t, v in series["values"]]))
    return results
