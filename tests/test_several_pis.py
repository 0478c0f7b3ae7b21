"""Several Pis, one broker, one BigQuery table: two real services with default configs on one host
(so one hostname and one machine id), each with its own simulated meter."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
from pathlib import Path
from typing import Dict, List

import pytest

from wattchecker_client.simulator import air_conditioner

from .conftest import wait_for
from .test_mqtt import FAST, brokers, mqtt_config, subscribers  # noqa: F401 (fixtures)

SEEDS = (7, 11)


def two_services(simulator, daemons, broker, tmp_path: Path, model: str = "btwattch1") -> List[dict]:
    """Two `run` processes, each with a default config (an address; mqtt: host and port) and its own meter."""
    services = []
    for i, seed in enumerate(SEEDS):
        args = ["--seed", str(seed), *FAST[2:]] + (["--model", model] if model != "btwattch1" else [])
        (address,) = simulator(*args).addresses
        folder = tmp_path / f"pi{i}"
        folder.mkdir()
        config = mqtt_config(folder / "config.yaml", folder / "data", address, broker.port)
        if model != "btwattch1":
            config.write_text(config.read_text().replace("  timeout: 2\n", f"  timeout: 2\n  model: {model}\n"))
        services.append({"seed": seed, "folder": folder, "daemon": daemons(config, folder)})
    return services


def discovered(sub, entities: int) -> Dict[str, dict]:
    """Per Home Assistant device (its node), one entity's config, once both services announced theirs."""
    def nodes():
        found = {}
        for topic, config in sub.discovery().items():
            found.setdefault(topic.split("/")[2], config)
        return found if len(sub.discovery()) == 2 * entities and len(found) == 2 else None
    return wait_for(nodes, timeout=30, what="both services' discovery")


def states_on(sub, topic: str) -> List[dict]:
    return [json.loads(p) for p in sub.on(topic)]


def measured_by(seed: int, state: dict) -> bool:
    m = air_conditioner(dt.datetime.strptime(state["timestamp"], "%Y-%m-%dT%H:%M:%SZ"), seed)
    return (state["W"], state["V"], state["A"]) == (m.watts, m.volts, m.milliamps / 1000)


def test_two_services_on_one_broker_keep_to_their_own_meters(simulator, daemons, brokers, subscribers, tmp_path):
    broker = brokers()
    sub = subscribers(broker.port)
    services = two_services(simulator, daemons, broker, tmp_path)
    nodes = discovered(sub, entities=6)  # four sensors, running, the run event
    state_topics = {c["state_topic"] for c in nodes.values()}
    status_topics = {c["availability"][0]["topic"] for c in nodes.values()}
    assert len(state_topics) == 2 and len(status_topics) == 2, nodes
    wait_for(lambda: all(len(sub.on(t)) >= 20 for t in state_topics), timeout=60, what="states of both meters")

    # Each Home Assistant device's state topic carries one meter's readings only.
    owners = {}
    for node, config in nodes.items():
        states = states_on(sub, config["state_topic"])
        matches = [s["seed"] for s in services if all(measured_by(s["seed"], st) for st in states)]
        assert len(matches) == 1, (node, matches, states[:3])
        owners[node] = matches[0]
    assert sorted(owners.values()) == sorted(SEEDS)

    # Home Assistant restarts: its birth message brings every discovery config and a state again.
    since = sub.count()
    sub.client.publish("homeassistant/status", "online", qos=1)
    wait_for(lambda: len(sub.discovery(since)) == 12 and all(sub.on(t, since) for t in state_topics), timeout=30,
             what="discovery and states again after Home Assistant's birth message")

    # One stops (SIGKILL: the broker's last will speaks for it); the other stays available.
    first, second = services
    node_of = {seed: node for node, seed in owners.items()}
    gone, kept = nodes[node_of[first["seed"]]], nodes[node_of[second["seed"]]]
    first["daemon"].stop(signal.SIGKILL)
    wait_for(lambda: sub.on(gone["availability"][0]["topic"])[-1:] == ["offline"], timeout=120,
             what="the stopped service's last will")
    since = sub.count()
    wait_for(lambda: len(sub.on(kept["state_topic"], since)) >= 3, timeout=30, what="the other's states")
    for availability in kept["availability"]:
        assert sub.on(availability["topic"])[-1] == "online", availability
    assert second["daemon"].stop() == 0

    # Each connected once: no client id taken over by the other.
    log = broker.log.read_text()
    clients = re.findall(r"New client connected from \S+ as (wattchecker-\S+)", log)
    assert len(clients) == 2 and len(set(clients)) == 2, clients
    assert "already connected" not in log
    assert re.search(r"final status mqtt: connected=\S+ connects=1 ", second["daemon"].stderr()), \
        second["daemon"].stderr()[-2000:]


def test_each_relay_topic_reaches_only_its_own_meter(simulator, daemons, brokers, subscribers, tmp_path):
    broker = brokers()
    sub = subscribers(broker.port)
    services = two_services(simulator, daemons, broker, tmp_path, model="btwattch2")
    nodes = discovered(sub, entities=8)  # four sensors, running, the run event, the switch, the over-power latch
    switches = [c for t, c in sub.discovery().items() if t.startswith("homeassistant/switch/")]
    assert len({s["command_topic"] for s in switches}) == 2
    wait_for(lambda: all(states_on(sub, s["state_topic"]) for s in switches), timeout=30, what="both relays' states")
    target, other = switches
    before = states_on(sub, other["state_topic"])[-1]["relay"]
    command = "OFF" if states_on(sub, target["state_topic"])[-1]["relay"] == "ON" else "ON"
    since = sub.count()
    sub.client.publish(target["command_topic"], command, qos=1)
    wait_for(lambda: any(json.loads(p)["relay"] == command for p in sub.on(target["state_topic"], since)),
             timeout=30, what=f"the target relay {command}")
    wait_for(lambda: len(sub.on(other["state_topic"], since)) >= 5, timeout=30, what="the other's states")
    assert {json.loads(p)["relay"] for p in sub.on(other["state_topic"], since)} == {before}
    for service in services:
        assert service["daemon"].stop() == 0
    assert len(nodes) == 2


BEFORE_IDS = Path(__file__).parent / "data" / "before-ids"  # made by the release before meter ids (bc7f17c)


def retained(port: int) -> Dict[str, str]:
    """What a client subscribing now is given: the broker's retained messages (a marker ends them)."""
    from .test_mqtt import Subscriber

    sub = Subscriber(port)
    try:
        wait_for(lambda: sub.client.is_connected(), timeout=60, what="a subscriber")
        wait_for(lambda: sub.client.publish("test/end-of-retained", "1", qos=1).rc == 0 and
                 sub.on("test/end-of-retained"), timeout=60, what="the retained messages")
        with sub.lock:
            return {t: p for t, p, kept in sub.messages if kept}
    finally:
        sub.close()


def publish_retained(port: int, messages: Dict[str, str]) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-old-release")
    client.connect("127.0.0.1", port)
    client.loop_start()
    for topic, payload in messages.items():
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def test_an_upgrade_keeps_home_assistants_entities(simulator, daemons, brokers, subscribers, tmp_path):
    broker = brokers()
    (address,) = simulator(*FAST).addresses
    port = address.rsplit(":", 1)[1]
    old = json.loads((BEFORE_IDS / "retained.json").read_text().replace("{PORT}", port))
    publish_retained(broker.port, old)
    data = tmp_path / "data"
    data.mkdir()
    for path in (BEFORE_IDS / "data").iterdir():
        (data / path.name).write_bytes(path.read_bytes())
    config = mqtt_config(tmp_path / "config.yaml", data, address, broker.port)
    sub = subscribers(broker.port)

    for run in range(2):
        since = sub.count()
        daemon = daemons(config, tmp_path)
        wait_for(lambda: len(sub.discovery(since)) == 6 and sub.states(since), timeout=30, what="discovery and states")
        assert daemon.stop() == 0, daemon.stderr()
        cleared = re.findall(r"cleared the retained (\S+) of the old topic layout", daemon.stderr())
        assert sorted(cleared) == (["wattchecker/status", "wattchecker/wattchecker/availability"] if run == 0 else [])

        now = retained(broker.port)
        old_discovery = {t: json.loads(p) for t, p in old.items() if t.startswith("homeassistant/")}
        new_discovery = {t: json.loads(p) for t, p in now.items() if t.startswith("homeassistant/")}
        added = sorted(t.split("/")[-2] for t in set(new_discovery) - set(old_discovery))
        assert set(old_discovery) <= set(new_discovery) and added == ["run", "running"]  # no second device
        for topic, before in old_discovery.items():
            after = new_discovery[topic]
            assert after["unique_id"] == before["unique_id"]  # Home Assistant keeps the entity and its history
            assert after["device"]["identifiers"] == before["device"]["identifiers"]
            assert after["name"] == before["name"] and after["device"]["name"] == before["device"]["name"]
        # The old layout's retained status and availability are gone; the new ones are there.
        assert "wattchecker/status" not in now and "wattchecker/wattchecker/availability" not in now
        config_now = next(iter(new_discovery.values()))
        assert now[config_now["availability"][0]["topic"]] == "offline"  # the clean goodbye
        assert config_now["availability"][1]["topic"] in now
    assert json.loads((data / "meter-ids.json").read_text())["meters"] == {
        "wattchecker": next(iter(new_discovery.values()))["device"]["identifiers"][0][len("wattchecker_"):]}


def test_two_services_load_into_one_table_each_row_keeps_its_device(emulator, daemons, tmp_path):
    from wattchecker_client.clock import time_zone
    from wattchecker_client.report import meter_report

    from .conftest import Emulator, run_cli, write_config
    from .datacheck import read
    from .test_daemon_upload import ledger, with_bigquery

    emulator.start()
    services = []
    for seed in SEEDS:  # each a default config: one meter, no name, the same table
        folder = tmp_path / f"pi{seed}"
        folder.mkdir()
        config = write_config(folder / "config.yaml", folder / "data", f"sim://?seed={seed}&clock_speed=1200",
                              poll_interval=0.05)
        services.append({"folder": folder, "config": with_bigquery(config, emulator.url),
                         "daemon": daemons(config, folder)})
    for s in services:
        wait_for(lambda: len(ledger(s["folder"] / "data")["uploaded"]) >= 2, timeout=180, what="two hours uploaded")
    for s in services:
        assert s["daemon"].stop() == 0, s["daemon"].stderr()

    table = f"{Emulator.PROJECT}.wattchecker.power"
    devices = set()
    for s in services:
        data = s["folder"] / "data"
        (device,) = json.loads((data / "meter-ids.json").read_text())["meters"].values()
        devices.add(device)
        # Only the uploaded hours, as a folder of their own: the local report of exactly what was loaded.
        loaded = s["folder"] / "loaded"
        loaded.mkdir()
        expected = []
        for key in ledger(data)["uploaded"]:
            stem, rest = key.split(".", 1)
            source = data / f"{stem}.json.{rest}.gz"
            (loaded / source.name).write_bytes(source.read_bytes())
            expected += [json.loads(line) for line in read(source)]
        rows = emulator.query(f"SELECT datetime, W FROM `{table}` WHERE device = '{device}' ORDER BY datetime")
        assert [(t.strftime("%Y-%m-%d %H:%M:%S"), w) for t, w in rows] == sorted(
            (r["datetime"], r["W"]) for r in expected)
        s["device"], s["report"] = device, meter_report(loaded, "wattchecker-data", device, time_zone("Asia/Tokyo"))
    assert len(devices) == 2  # two Pis' default configs: two devices, no row without one
    assert emulator.query(f"SELECT COUNT(*) FROM `{table}` WHERE device IS NULL") == [(0,)]

    # The view `report --sql` prints: the same per-device, per-day numbers as each Pi's own report.
    sql = run_cli("report", "--config", str(services[0]["config"]), "--sql")
    assert sql.returncode == 0, sql.stderr
    client = emulator.client()
    client.query(sql.stdout).result()
    got = emulator.query(f"SELECT device, day, kwh, hours_covered, peak_w FROM "
                         f"`{Emulator.PROJECT}.wattchecker.wattchecker_daily` ORDER BY device, day")
    expected = sorted((s["device"], day, t.kwh, t.hours_covered, t.peak_watts)
                      for s in services for day, t in s["report"].days.items())
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for g, e in zip(got, expected):
        assert g[2:] == pytest.approx(e[2:]), (g, e)
