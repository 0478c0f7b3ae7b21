"""Runs in Home Assistant, end to end: a real Mosquitto, real `run` processes, the simulator playing a wash."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from wattchecker_client.traces import trace

from .conftest import run_cli, wait_for
from .test_mqtt import brokers, mqtt_config, subscribers  # noqa: F401  (fixtures)

pytest.importorskip("paho.mqtt.client", reason="needs paho-mqtt: pip install 'wattchecker-client[mqtt]'")

RUN_EVENT = r"wattchecker/[a-z0-9_-]+/run"


@pytest.mark.process
def test_the_finished_event_reaches_a_subscriber_once_per_run_with_the_reports_kwh(
    simulator, daemons, brokers, subscribers, tmp_path
):
    broker = brokers()
    sub = subscribers(broker.port)
    # The wash trace (6 h, two washes with pauses up to 4 min) in 18 s: rows every 2-3 meter seconds.
    (address,) = simulator("--seed", "1", "--clock-speed", "1200", "--load", "wash").addresses
    data_dir = tmp_path / "data"
    config = mqtt_config(tmp_path / "config.yaml", data_dir, address, broker.port)

    def events(since: int = 0) -> list:
        return [json.loads(p) for p in sub.matching(RUN_EVENT, since)]

    for _ in range(2):  # a restart between: no run is announced twice
        since = sub.count()
        daemon = daemons(config, tmp_path)
        wait_for(lambda: len(sub.discovery(since)) == 6, timeout=30, what="discovery")
        wait_for(lambda: len(events(since)) >= 2, timeout=120, what="two finished runs")
        assert daemon.stop() == 0, daemon.stderr()

    configs = sub.discovery()
    running = next(c for t, c in configs.items() if re.fullmatch(r"homeassistant/binary_sensor/\w+/running/config", t))
    event = next(c for t, c in configs.items() if re.fullmatch(r"homeassistant/event/\w+/run/config", t))
    assert running["device_class"] == "running" and running["payload_on"] == "ON"
    assert event["event_types"] == ["finished"] and re.fullmatch(RUN_EVENT, event["state_topic"])
    assert {s["running"] for s in sub.states()} == {"ON", "OFF"}

    result = run_cli("report", "--config", str(config), "--runs-csv", str(tmp_path / "runs.csv"))
    assert result.returncode == 0, result.stderr
    reported = [line.split(",") for line in (tmp_path / "runs.csv").read_text().splitlines()[1:]]
    got = events()
    assert len(got) >= 4 and len(got) == len(reported)
    for payload, (_, start, end, seconds, kwh, cost, peak) in zip(got, reported):
        assert payload["event_type"] == "finished"
        assert dt.datetime.fromisoformat(payload["start"].replace("Z", "+00:00")) == dt.datetime.fromisoformat(start)
        assert dt.datetime.fromisoformat(payload["end"].replace("Z", "+00:00")) == dt.datetime.fromisoformat(end)
        assert (payload["duration_s"], f"{payload['kWh']:.6f}", f"{payload['cost']:.4f}", payload["peak_W"]) == (
            int(seconds), kwh, cost, float(peak))


@pytest.mark.process
def test_a_restart_in_the_middle_of_a_run_keeps_running_on_and_the_same_run(
    simulator, daemons, brokers, subscribers, tmp_path
):
    """A fridge at its real pace, two hours of it on disk, its compressor running: stop the service, start it
    again; Home Assistant's Running stays ON and the run's seconds go on from where they were."""
    from wattchecker_client.clock import Clock, utc_epoch

    from .test_runs_page import seed_files, seed_with_runs

    now = Clock().now().replace(microsecond=0)
    seed, going = seed_with_runs(utc_epoch(now) + 60, lasting=600)
    assert going, "no fridge seed with a run going on now"
    seed_files(tmp_path / "data", seed, now - dt.timedelta(seconds=20))
    broker = brokers()
    sub = subscribers(broker.port)
    (address,) = simulator("--seed", str(seed), "--load", "fridge").addresses
    config = mqtt_config(tmp_path / "config.yaml", tmp_path / "data", address, broker.port)
    config.write_text(config.read_text().replace("  timeout: 2\n", "  timeout: 2\n  runs: {start_watts: 30, "
                                                 "stop_watts: 10, stop_after: 120}\n"))
    seconds = []
    for _ in range(2):
        since = sub.count()
        daemon = daemons(config, tmp_path)
        state = wait_for(lambda: next((s for s in sub.states(since) if "energy_kWh" in s), None), timeout=60,
                         what="a state once the files are counted")
        assert state["running"] == "ON"
        seconds.append(state["run_seconds"])
        assert daemon.stop() == 0, daemon.stderr()
    # It began before the first start (seed_with_runs), so only the files could say so: the first state
    # counts at least its seconds on disk; after the restart it goes on, neither lost nor started again.
    tr, files_end = trace("fridge", seed), utc_epoch(now) - 20
    began = max(files_end - (files_end - start) % tr.period for start, _ in tr.runs)  # the latest start on disk
    assert files_end - began <= seconds[0] < seconds[1]
    assert sub.matching(RUN_EVENT) == []  # nor finished
