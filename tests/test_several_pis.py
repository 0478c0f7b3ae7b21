"""Several Pis, one broker, one BigQuery table: two real services with default configs on one host
(so one hostname and one machine id), each with its own simulated meter."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
from pathlib import Path
from typing import Dict, List

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
    nodes = discovered(sub, entities=4)
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
    wait_for(lambda: len(sub.discovery(since)) == 8 and all(sub.on(t, since) for t in state_topics), timeout=30,
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
    nodes = discovered(sub, entities=5)
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
