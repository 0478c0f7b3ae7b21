"""MQTT and Home Assistant discovery, end to end: a real Mosquitto, real `run` processes, the simulated meter."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.request import urlopen

import pytest

from wattchecker_client.clock import time_zone
from wattchecker_client.report import meter_report
from wattchecker_client.simulator import air_conditioner

from .conftest import ROOT, free_port, line_of, run_cli, wait_for, write_config
from .datacheck import check_data_dir, read

mqtt = pytest.importorskip("paho.mqtt.client", reason="needs paho-mqtt: pip install 'wattchecker-client[mqtt]'")

MOSQUITTO = "/usr/sbin/mosquitto"
SEED = 7
FAST = ["--seed", str(SEED), "--clock-speed", "1200"]
METER = "wattchecker"  # a single device: section is named this
PREFIX = "wattchecker"
# A meter's topics carry its id (identity.py), the status topic this service's host key.
STATE = rf"{PREFIX}/[a-z0-9_-]+/state"
AVAILABILITY = rf"{PREFIX}/[a-z0-9_-]+/availability"
STATUS = rf"{PREFIX}/[A-Za-z0-9_-]+/status"
ENTITIES = {
    "power": ("W", "power", "W", "measurement"),
    "voltage": ("V", "voltage", "V", "measurement"),
    "current": ("A", "current", "A", "measurement"),
    "energy": ("energy_kWh", "energy", "kWh", "total_increasing"),
}


class Mosquitto:
    """A real broker on a free loopback port, anonymous or with a password file; stop and start again."""

    def __init__(self, workdir: Path, users: Optional[Dict[str, str]] = None) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.skip("needs the mosquitto broker (Debian package mosquitto)")
        self.port = free_port()
        self.log = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        # As root, mosquitto would switch to its own user, who cannot read the test's folder.
        lines = [f"user {pwd.getpwuid(os.getuid()).pw_name}", f"listener {self.port} 127.0.0.1"]
        if users:
            passwords = workdir / "mosquitto.passwd"
            for i, (user, password) in enumerate(users.items()):
                flags = ["-b", "-c"] if i == 0 else ["-b"]
                subprocess.run(["mosquitto_passwd", *flags, str(passwords), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)

        def accepting() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(accepting, timeout=60, what="mosquitto")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture
def brokers(tmp_path):
    started: List[Mosquitto] = []

    def start(**kwargs) -> Mosquitto:
        broker = Mosquitto(tmp_path, **kwargs)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


class Subscriber:
    """A paho client subscribed to everything, reconnecting by itself; keeps every message in order."""

    def __init__(self, port: int, username: Optional[str] = None, password: Optional[str] = None) -> None:
        self.messages: List[Tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-subscriber-{port}")
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, reason, p: c.subscribe("#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload.decode(), bool(message.retain)))

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def on(self, topic: str, since: int = 0) -> List[str]:
        with self.lock:
            return [payload for t, payload, _ in self.messages[since:] if t == topic]

    def matching(self, pattern: str, since: int = 0) -> List[str]:
        """Payloads on topics matching a regular expression (a meter's id is in its topics)."""
        with self.lock:
            return [payload for t, payload, _ in self.messages[since:] if re.fullmatch(pattern, t)]

    def states(self, since: int = 0) -> List[dict]:
        return [json.loads(p) for p in self.matching(STATE, since)]

    def status(self, since: int = 0) -> List[str]:
        return self.matching(STATUS, since)

    def discovery(self, since: int = 0) -> Dict[str, dict]:
        with self.lock:
            return {t: json.loads(p) for t, p, _ in self.messages[since:]
                    if t.startswith("homeassistant/") and t.endswith("/config")}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscribers():
    made: List[Subscriber] = []

    def make(*args, **kwargs) -> Subscriber:
        sub = Subscriber(*args, **kwargs)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


def mqtt_config(path: Path, data_dir: Path, address: str, port: int, **mqtt_keys) -> Path:
    write_config(path, data_dir, address)
    keys = {"host": "127.0.0.1", "port": port, "publish_interval": 1, **mqtt_keys}
    with open(path, "a") as f:
        f.write("mqtt:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in keys.items()))
    return path


def assert_state_is_what_the_meter_measured(state: dict) -> None:
    when = dt.datetime.strptime(state["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    measured = air_conditioner(when, SEED)
    assert (state["W"], state["V"], state["A"]) == (measured.watts, measured.volts, measured.milliamps / 1000)


def assert_discovery_is_complete(configs: Dict[str, dict]) -> Dict[str, str]:
    """Every key Home Assistant needs per entity; returns entity -> unique_id."""
    by_entity = {}
    for topic, config in configs.items():
        if re.fullmatch(r"homeassistant/(binary_sensor|event)/wattchecker_[a-z0-9_]+/run(ning)?/config", topic):
            continue  # the runs' entities: test_runs_mqtt.py
        match = re.fullmatch(r"homeassistant/sensor/(wattchecker_[a-z0-9_]+)/(\w+)/config", topic)
        assert match, topic
        node, entity = match.groups()
        field, device_class, unit, state_class = ENTITIES[entity]
        assert re.fullmatch(STATE, config["state_topic"])
        keep_if_missing = " | is_defined" if entity == "energy" else ""
        assert config["value_template"] == f"{{{{ value_json.{field}{keep_if_missing} }}}}"
        assert (config["device_class"], config["unit_of_measurement"], config["state_class"]) == (
            device_class, unit, state_class)
        assert config["unique_id"] == f"{node}_{entity}"
        status, availability = (a["topic"] for a in config["availability"])
        assert re.fullmatch(STATUS, status) and availability == config["state_topic"][:-len("state")] + "availability"
        assert config["availability_mode"] == "all"
        assert config["expire_after"] >= 60
        device = config["device"]
        assert device["identifiers"] == [node]
        assert (device["manufacturer"], device["model"], device["name"]) == ("RATOC Systems", "REX-BTWATTCH1", METER)
        assert device["sw_version"]
        by_entity[entity] = config["unique_id"]
    assert sorted(by_entity) == sorted(ENTITIES)
    return by_entity


def report_kwh(data_dir: Path) -> float:
    return meter_report(data_dir, "wattchecker-data", METER, time_zone("UTC")).total().kwh


def saved_kwh(data_dir: Path) -> float:
    saved = json.loads((data_dir / "energy.json").read_text())["meters"][METER]
    return (saved["credited_joules"] + (saved["last"][1] if saved["last"] else 0)) / 3_600_000


def mqtt_warnings(log: str) -> List[str]:
    return [line for line in log.splitlines() if re.search(r"(WARNING|ERROR) wattchecker_client\.mqtt", line)]


def test_states_discovery_and_an_energy_that_only_grows_across_sigterm_and_sigkill(
    simulator, daemons, brokers, subscribers, tmp_path
):
    broker = brokers(users={"wattchecker": "s3cret", "ha": "ha-pass"})
    sub = subscribers(broker.port, "ha", "ha-pass")
    (address,) = simulator(*FAST).addresses
    data_dir = tmp_path / "data"
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    config = mqtt_config(tmp_path / "config.yaml", data_dir, address, broker.port,
                         username="wattchecker", password_file="mqtt-password")

    runs = []
    for stop_with in (signal.SIGTERM, signal.SIGKILL, signal.SIGTERM):
        since = sub.count()
        daemon = daemons(config, tmp_path)
        wait_for(lambda: len(sub.discovery(since)) == 6, timeout=30, what="discovery")
        wait_for(lambda: len({s.get("energy_kWh", 0) for s in sub.states(since)} - {0}) >= 3, timeout=60,
                 what="the energy growing in this run")
        status = daemon.stop(stop_with)
        runs.append((since, sub.count()))
        if stop_with == signal.SIGTERM:
            assert status == 0, daemon.stderr()
        wait_for(lambda: sub.status(runs[-1][0])[-1:] == ["offline"], timeout=60,
                 what="offline status (the clean goodbye, or the broker's last will after a SIGKILL)")

    states = sub.states()
    assert len(states) > 100
    for state in states:
        assert_state_is_what_the_meter_measured(state)
    energies = [s["energy_kWh"] for s in states if "energy_kWh" in s]  # absent only while the files are counted
    assert len(energies) > 100
    assert energies == sorted(energies), "energy went down"
    stamps = [s["timestamp"] for s in states]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

    unique_ids = [assert_discovery_is_complete(sub.discovery(since)) for since, _ in runs]
    assert unique_ids[0] == unique_ids[1] == unique_ids[2]  # stable across restarts
    assert sub.status(runs[0][0])[0] == "online"
    assert "online" in sub.matching(AVAILABILITY)

    # The energy of the files, as the report counts it, is what was saved; nothing published exceeds it.
    saved, reported = saved_kwh(data_dir), report_kwh(data_dir)
    assert saved == pytest.approx(reported, rel=1e-9), (saved, reported)  # the same sum, in another order
    assert max(energies) <= reported + 0.5e-6  # published with 6 decimals
    check_data_dir(data_dir, SEED, formats_agree=False)


def test_the_broker_stopped_and_started_again(simulator, daemons, brokers, subscribers, tmp_path):
    broker = brokers()
    sub = subscribers(broker.port)
    (address,) = simulator(*FAST).addresses
    data_dir = tmp_path / "data"
    config = mqtt_config(tmp_path / "config.yaml", data_dir, address, broker.port)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(sub.states()) >= 20, timeout=30, what="states")

    broker.stop()
    wait_for(lambda: "lost the broker" in daemon.stderr(), timeout=30, what="the publisher to notice")
    # An outage with a failed reconnect in it, as the status line (every 2 s) counts them: made so, not slept for.
    wait_for(lambda: re.search(r"mqtt: connected=no .*connect_failures=[1-9]", daemon.stderr()), timeout=60,
             what="a failed reconnect")
    since = sub.count()
    broker.start()  # no persistence: only a republished discovery brings the entities back
    wait_for(lambda: len(sub.discovery(since)) == 6, timeout=60, what="discovery published again")
    wait_for(lambda: len(sub.states(since)) >= 20, timeout=30, what="states again")
    assert sub.status(since)[0] == "online"
    assert daemon.stop() == 0
    log = daemon.stderr()

    (received,) = re.findall(r"final status writer: rows_received=(\d+)", log)
    held = check_data_dir(data_dir, SEED)
    assert len(held["csv"]) == int(received)  # every reading of the outage is in the files
    warnings = mqtt_warnings(log)
    assert len(warnings) == 1 and "lost the broker" in warnings[0], warnings
    assert "mqtt: connected again" in log
    assert re.search(r"final status mqtt: connected=no connects=2 outages=1 connect_failures=[1-9]", log), log
    for state in sub.states(since):
        assert_state_is_what_the_meter_measured(state)


def test_an_unplugged_meter_goes_offline_then_online(simulator, daemons, brokers, subscribers, tmp_path):
    broker = brokers()
    sub = subscribers(broker.port)
    (address,) = simulator(*FAST, "--drop-after", "300").addresses  # the link drops every 300 requests
    config = mqtt_config(tmp_path / "config.yaml", tmp_path / "data", address, broker.port)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: sub.matching(AVAILABILITY)[-3:] == ["online", "offline", "online"], timeout=60,
             what="availability online, offline, online")
    assert daemon.stop() == 0
    assert sub.status()[-1] == "offline"


def test_a_wrong_password_costs_one_log_line_and_never_the_files(simulator, daemons, brokers, tmp_path):
    broker = brokers(users={"wattchecker": "right"})
    (address,) = simulator(*FAST).addresses
    data_dir = tmp_path / "data"
    config = mqtt_config(tmp_path / "config.yaml", data_dir, address, broker.port,
                         username="wattchecker", password="wrong")
    daemon = daemons(config, tmp_path)
    wait_for(lambda: re.search(r"status mqtt: connected=no connects=0 outages=1 connect_failures=[2-9]",
                               daemon.stderr()), timeout=30, what="a few refused attempts")
    wait_for(lambda: len((data_dir / "wattchecker-data.csv").read_text().splitlines()) >= 100
             if (data_dir / "wattchecker-data.csv").exists() else False, timeout=30, what="rows on disk")
    assert daemon.stop() == 0
    log = daemon.stderr()
    warnings = mqtt_warnings(log)
    assert len(warnings) == 1, warnings
    assert "the broker refused the connection: Not authorized" in warnings[0]
    (received,) = re.findall(r"final status writer: rows_received=(\d+)", log)
    assert len(check_data_dir(data_dir, SEED)["csv"]) == int(received) > 100


@pytest.mark.parametrize("fault, why", [
    ("tls", "TLS failed"),
    ("closed port", "connection refused: is the broker running, and is mqtt.port right?"),
    ("silent peer", "no answer within 10 s: is it an MQTT broker (mqtt.port, mqtt.tls)?"),
])
def test_a_wrong_port_or_tls_setting_costs_one_log_line_and_never_the_files(
    simulator, daemons, brokers, tmp_path, fault, why
):
    keys = {}
    silent = None
    if fault == "tls":
        port, keys["tls"] = brokers().port, True  # a plain broker, spoken to in TLS
    elif fault == "closed port":
        port = free_port()
    else:  # takes the connection, never answers: some other service on that port
        silent = socket.create_server(("127.0.0.1", 0))
        port = silent.getsockname()[1]
    (address,) = simulator(*FAST).addresses
    data_dir = tmp_path / "data"
    daemon = daemons(mqtt_config(tmp_path / "config.yaml", data_dir, address, port, **keys), tmp_path)
    try:
        wait_for(lambda: re.search(r"status mqtt: connected=no connects=0 outages=1 connect_failures=[1-9]",
                                   daemon.stderr()), timeout=40, what="a failed attempt counted")
        assert daemon.stop() == 0
    finally:
        if silent is not None:
            silent.close()
    log = daemon.stderr()
    warnings = mqtt_warnings(log)
    assert len(warnings) == 1 and f"mqtt: cannot connect to 127.0.0.1:{port}: {why}" in warnings[0], warnings
    (received,) = re.findall(r"final status writer: rows_received=(\d+)", log)
    assert len(check_data_dir(data_dir, SEED)["csv"]) == int(received) > 100


def test_a_meters_ids_come_from_its_address_alone(tmp_path):
    from wattchecker_client.config import parse_config
    from wattchecker_client.mqtt import discovery_messages

    def ids(host: str, name: str) -> dict:
        config = parse_config(f"device: {{name: {name}, address: '00:0C:BF:12:34:AB', model: btwattch2}}\n"
                              f"mqtt: {{host: {host}, client_id: c-{host}, discovery_prefix: ha}}\n")
        return {topic: (payload["unique_id"], payload["device"]["identifiers"], payload["device"]["connections"])
                for topic, payload in discovery_messages(config.mqtt, config.devices[0], has_relay=True)}

    first = ids("broker-a", "aircon")
    assert first == ids("broker-b", "aircon")  # another host, another client: the same entities
    assert first["ha/sensor/wattchecker_000cbf1234ab/energy/config"] == (
        "wattchecker_000cbf1234ab_energy", ["wattchecker_000cbf1234ab"], [["bluetooth", "00:0c:bf:12:34:ab"]])
    assert sorted(first) == sorted(f"ha/{c}/wattchecker_000cbf1234ab/{e}/config" for c, e in [
        ("sensor", "power"), ("sensor", "voltage"), ("sensor", "current"), ("sensor", "energy"), ("switch", "relay"),
        ("binary_sensor", "overloaded"), ("binary_sensor", "running"), ("event", "run")])


@pytest.mark.process
def test_check_config_validates_and_shows_the_section(tmp_path):
    config = write_config(tmp_path / "config.yaml", tmp_path, "sim://")
    text = config.read_text()
    config.write_text(text + "mqtt:\n  host: broker.lan\n  topic_prefix: home/power\n  publish_interval: 5\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert re.search(r"  MQTT: broker\.lan:1883 as wattchecker-" + re.escape(socket.gethostname()) + r"-[0-9a-f]{8}, "
                     r"states on home/power/<meter>/state every 5 s, discovery under homeassistant/", result.stdout)
    assert not (tmp_path / "meter-ids.json").exists()  # check-config only looks
    line = len(text.splitlines()) + 3
    config.write_text(text + "mqtt:\n  host: broker.lan\n  topic_prefix: home/#\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:{line}: mqtt.topic_prefix: 'home/#' is not a topic prefix" in result.stderr
    config.write_text(text + "mqtt:\n  host: broker.lan\n  username: me\n  password_file: missing\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"wattchecker-client: error: {config}:{line_of(config, 'password_file')}: mqtt.password_file: cannot read "
        f"{tmp_path / 'missing'}: No such file or directory: write the secret there (sudo install -o root "
        f"-g wattchecker -m 0640 /dev/stdin {tmp_path / 'missing'}, type it, Ctrl-D), or remove password_file")


@pytest.mark.process
def test_without_paho_one_line_names_the_extra(tmp_path):
    config = write_config(tmp_path / "config.yaml", tmp_path, "sim://")
    config.write_text(config.read_text() + "mqtt:\n  host: 127.0.0.1\n")
    hide = "import sys; sys.modules['paho'] = None; sys.modules['paho.mqtt'] = None; sys.modules['paho.mqtt.client'] = None"
    run = f"{hide}; from wattchecker_client.cli import main; sys.exit(main(['run', '--config', {str(config)!r}]))"
    result = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"wattchecker-client: error: {config}:{line_of(config, 'mqtt:')}: mqtt: the paho-mqtt library is not "
        "installed: pip install 'wattchecker-client[mqtt]'"]
    assert not (tmp_path / "wattchecker-data.csv").exists()


def test_the_relay_switch_of_an_rs_btwattch2(simulator, daemons, brokers, subscribers, tmp_path):
    broker = brokers()
    sub = subscribers(broker.port)
    (address,) = simulator(*FAST, "--model", "btwattch2").addresses
    config = mqtt_config(tmp_path / "config.yaml", tmp_path / "data", address, broker.port)
    config.write_text(config.read_text().replace("  timeout: 2\n", "  timeout: 2\n  model: btwattch2\n"))
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(sub.discovery()) == 8, timeout=30, what="discovery with a switch and the latch")
    (switch,) = [c for t, c in sub.discovery().items() if t.startswith("homeassistant/switch/")]
    assert switch["command_topic"] == switch["state_topic"][:-len("state")] + "relay/set"
    assert switch["device"]["model"] == "RS-BTWATTCH2"
    wait_for(lambda: sub.states(), timeout=30, what="a state")
    first = sub.states()[-1]["relay"]
    for command in (["OFF", "ON"] if first == "ON" else ["ON", "OFF"]):
        since = sub.count()
        sub.client.publish(switch["command_topic"], command, qos=1)
        wait_for(lambda: any(s["relay"] == command for s in sub.states(since)), timeout=30,
                 what=f"the relay {command}")
    assert daemon.stop() == 0


# --- the relay is safe to own (issue 16): a real broker, a simulated RS-BTWATTCH2 over TCP ---------------


def relay_set(sim) -> str:
    """The meter's command topic: it carries the meter's id (identity.py), derived as the service derives it."""
    from wattchecker_client.identity import derive

    return f"{PREFIX}/{derive({METER: sim.addresses[0]}).meters[METER]}/relay/set"


def relay_setup(simulator, brokers, subscribers, tmp_path, relay=None, sim_args=(), port=None, http=None):
    """(broker, subscriber, simulator, config) for one btwattch2 at real speed, polled 4 times a second."""
    broker = brokers()
    sub = subscribers(broker.port)
    tcp = ["--tcp", f"127.0.0.1:{port}"] if port else []
    sim = simulator("--model", "btwattch2", "--seed", str(SEED), *tcp, *sim_args)
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", sim.addresses[0], poll_interval=0.25)
    text = config.read_text().replace("  timeout: 2\n", "  timeout: 2\n  model: btwattch2\n")
    if relay:
        text += "  relay:\n" + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in relay.items())
    text += f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n  publish_interval: 1\n"
    if http:
        text += f"http:\n  listen: 127.0.0.1:{http}\n"
    config.write_text(text)
    return broker, sub, sim, config


def relay_writes(sim) -> List[str]:
    """Every relay write that reached the simulated meter, byte-exact (the simulator logs each)."""
    return re.findall(r"relay write (a7 [0-9a-f]{2})", sim.log())


def relay_states(sub, since: int = 0) -> List[str]:
    return [s["relay"] for s in sub.states(since) if "relay" in s]


def final_gaps(log: str) -> int:
    (gaps,) = re.findall(rf"final status {METER}: .*?\bgaps=(\d+)", log)
    return int(gaps)


def test_a_flood_of_commands_switches_a_handful_of_times_ends_in_the_last_and_reading_never_stalls(
    simulator, daemons, brokers, subscribers, tmp_path
):
    broker, sub, sim, config = relay_setup(simulator, brokers, subscribers, tmp_path)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: relay_states(sub)[-3:] == ["ON"] * 3, timeout=30, what="states with the relay on")
    commander = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood")
    commander.connect("127.0.0.1", broker.port)
    commander.loop_start()
    sent = [commander.publish(relay_set(sim), "ON" if i % 2 == 0 else "OFF", qos=1) for i in range(200)]  # ends OFF
    for info in sent:
        info.wait_for_publish(10)
    commander.loop_stop()
    since = sub.count()
    wait_for(lambda: relay_states(sub, since)[-5:] == ["OFF"] * 5, timeout=30, what="five states with the relay off")
    assert daemon.stop() == 0
    log = daemon.stderr()
    writes = relay_writes(sim)
    assert 1 <= len(writes) <= 3 and writes[-1] == "a7 00", writes
    assert final_gaps(log) == 0, log[-2000:]  # every meter second recorded through the flood
    assert re.search(r"final status mqtt: .*relay_commands=200", log), log[-2000:]


def test_a_retained_command_is_ignored_at_every_start_with_one_line_saying_how_to_clear_it(
    simulator, daemons, brokers, subscribers, tmp_path
):
    broker, sub, sim, config = relay_setup(simulator, brokers, subscribers, tmp_path)
    sub.client.publish(relay_set(sim), "OFF", qos=1, retain=True).wait_for_publish(10)
    for run in range(2):
        since = sub.count()
        daemon = daemons(config, tmp_path)
        wait_for(lambda: relay_states(sub, since)[-5:] == ["ON"] * 5, timeout=30, what="five states, relay on")
        assert daemon.stop() == 0
        warnings = mqtt_warnings(daemon.stderr())
        assert len(warnings) == 1, warnings
        assert warnings[0].endswith(f"ignoring a retained command on {relay_set(sim)}: a command is for now, not for "
                                    f"every restart; clear it with `mosquitto_pub -r -n -t {relay_set(sim)}`")
    assert relay_writes(sim) == []


def test_a_command_given_while_the_meter_is_away_is_not_carried_out_when_it_comes_back(
    simulator, daemons, brokers, subscribers, tmp_path
):
    port = free_port()
    broker, sub, sim, config = relay_setup(simulator, brokers, subscribers, tmp_path, relay={"max_age": 3},
                                           port=port)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: relay_states(sub)[-3:] == ["ON"] * 3, timeout=30, what="states with the relay on")
    sim.stop()
    wait_for(lambda: "reconnecting" in daemon.stderr(), timeout=30, what="the meter gone")
    sub.client.publish(relay_set(sim), "OFF", qos=1).wait_for_publish(10)
    wait_for(lambda: "relay_commands=1" in daemon.stderr(), timeout=30, what="the command taken")
    time.sleep(4)  # the meter stays away longer than relay.max_age (3 s)
    back = simulator("--model", "btwattch2", "--seed", str(SEED), "--tcp", f"127.0.0.1:{port}")
    since = sub.count()
    wait_for(lambda: relay_states(sub, since)[-5:] == ["ON"] * 5, timeout=90, what="the meter back, relay on")
    assert daemon.stop() == 0
    assert relay_writes(back) == []
    assert re.search(r"WARNING wattchecker_client\.meter: wattchecker: relay off dropped: asked \d+ s ago, older "
                     r"than 3 s by the time the meter could be reached", daemon.stderr())


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


def test_a_20_mb_payload_costs_no_memory_and_one_short_line_and_garbage_a_line_a_minute(
    simulator, daemons, brokers, subscribers, tmp_path
):
    broker, sub, sim, config = relay_setup(simulator, brokers, subscribers, tmp_path)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(relay_states(sub)) >= 5, timeout=30, what="states")
    time.sleep(2)
    before = rss_kb(daemon.proc.pid)
    sub.client.publish(relay_set(sim), b"X" * 20_000_000, qos=1).wait_for_publish(60)
    wait_for(lambda: "20000000-byte payload" in daemon.stderr(), timeout=60, what="the payload refused")
    time.sleep(2)
    after = rss_kb(daemon.proc.pid)
    for i in range(1000):
        sub.client.publish(relay_set(sim), f"garbage{i}", qos=0)
    wait_for(lambda: "bad_commands=1001" in daemon.stderr(), timeout=60, what="1000 garbage messages counted")
    assert daemon.stop() == 0
    print(f"RSS before {before} kB, after the 20 MB payload {after} kB")
    assert abs(after - before) < 5 * 1024, (before, after)
    warnings = mqtt_warnings(daemon.stderr())
    assert warnings[0].endswith(f"mqtt: ignoring a 20000000-byte payload 'XXXXXXXXXXXXXXXX'... on {relay_set(sim)} "
                                "(send ON or OFF)")
    assert len(warnings[0]) < 200
    # The garbage: one count when the minute ends (here: at shutdown), never a line each.
    assert len(warnings) == 2 and warnings[1].endswith("mqtt: 1000 more bad relay commands ignored in the last 60 s")
    assert relay_writes(sim) == []


def overload_rows(data_dir: Path) -> List[Tuple[dt.datetime, float]]:
    rows = [json.loads(line) for path in data_dir.glob("wattchecker-data.json*") for line in read(path)]
    return sorted((dt.datetime.strptime(r["datetime"], "%Y-%m-%d %H:%M:%S"), r["W"]) for r in rows)


def test_over_power_cuts_the_relay_off_latches_across_a_restart_and_an_explicit_on_clears_it(
    simulator, daemons, brokers, subscribers, tmp_path
):
    # The simulated load never reads below 0.5 W while on: over the limit from the first reading.
    http = free_port()
    broker, sub, sim, config = relay_setup(simulator, brokers, subscribers, tmp_path,
                                           relay={"max_watts": 0.5, "max_watts_for": 2}, http=http)
    data_dir = tmp_path / "data"
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(sub.discovery()) == 8, timeout=30, what="discovery with the switch and the latch")
    (latch,) = [c for t, c in sub.discovery().items() if t.startswith("homeassistant/binary_sensor/") and
                t.endswith("/overloaded/config")]
    assert (latch["device_class"], latch["payload_on"], latch["payload_off"]) == ("problem", "ON", "OFF")
    assert latch["value_template"] == "{{ value_json.overloaded | is_defined }}"
    assert latch["state_topic"] == relay_set(sim)[:-len("relay/set")] + "state" and latch["unique_id"].endswith("_overloaded")
    wait_for(lambda: [s.get("overloaded") for s in sub.states()][-3:] == ["ON"] * 3, timeout=30, what="latched")
    assert relay_states(sub)[-1] == "OFF"
    # On /metrics and on the page too.
    metrics = urlopen(f"http://127.0.0.1:{http}/metrics", timeout=60).read().decode()
    assert f'wattchecker_relay_overloaded{{meter="{METER}"}} 1.0' in metrics.splitlines()
    page = json.loads(urlopen(f"http://127.0.0.1:{http}/api/page", timeout=60).read())
    assert page["meters"][METER]["status"]["overloaded"] is True
    assert daemon.stop() == 0
    log = daemon.stderr()
    assert re.search(r"WARNING wattchecker_client\.meter: wattchecker: over 0\.5 W for 2 s: switching the relay "
                     r"off and latching 'overloaded' until an explicit ON", log)
    rows = overload_rows(data_dir)
    first_off = next(t for t, watts in rows if watts == 0)
    assert rows[0][1] > 0.5 and (first_off - rows[0][0]).total_seconds() <= 2 + 2  # meter seconds
    assert json.loads((data_dir / "relay.json").read_text())["meters"][METER] == {"overloaded": True,
                                                                                  "last_set": False}

    since = sub.count()
    daemon = daemons(config, tmp_path)  # after a SIGTERM: still latched, still off, nothing written
    wait_for(lambda: len(sub.states(since)) >= 5, timeout=30, what="states after the restart")
    assert {s["overloaded"] for s in sub.states(since)} == {"ON"}
    assert {s["relay"] for s in sub.states(since)} == {"OFF"}
    since = sub.count()
    sub.client.publish(relay_set(sim), "ON", qos=1)
    wait_for(lambda: any(s["relay"] == "ON" and s["overloaded"] == "OFF" for s in sub.states(since)), timeout=30,
             what="an explicit ON clearing the latch")
    assert daemon.stop() == 0
    assert "relay ON asked: the over-power latch is cleared" in daemon.stderr()
    assert relay_writes(sim)[:2] == ["a7 00", "a7 01"]  # the cut-off once, then the ON (it may trip again after)


@pytest.mark.parametrize("mode, before, expected", [
    # (on_connect, the relay before the service starts, every write that reached the meter)
    ("keep", "off", ["a7 00", "a7 01"]),  # ours, then our `switch on`: the service never switched
    ("on", "off", ["a7 00", "a7 01", "a7 00", "a7 01"]),
    ("off", "on", ["a7 00", "a7 01", "a7 00"]),
    ("restore", "on", ["a7 00", "a7 01", "a7 00"]),  # last set: off, as a previous run saved it
])
def test_on_connect_applies_at_the_first_connect_and_after_a_link_drop(
    simulator, daemons, brokers, subscribers, tmp_path, mode, before, expected
):
    # The link drops every 40 requests (10 s at 4 polls a second); `switch` comes from another client.
    broker, sub, sim, config = relay_setup(simulator, brokers, subscribers, tmp_path, relay={"on_connect": mode},
                                           sim_args=("--drop-after", "40"))
    address = sim.addresses[0]
    if mode == "restore":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "relay.json").write_text(json.dumps(
            {"meters": {METER: {"overloaded": False, "last_set": False}}}))
    if before == "off":
        assert run_cli("switch", address, "off", "--model", "btwattch2").returncode == 0
    after = {"keep": "OFF", "on": "ON", "off": "OFF", "restore": "OFF"}[mode]
    daemon = daemons(config, tmp_path)
    wait_for(lambda: relay_states(sub)[-3:] == [after] * 3, timeout=30, what=f"on_connect: {mode} at the start")
    flip = "off" if after == "ON" else "on"
    assert run_cli("switch", address, flip, "--model", "btwattch2").returncode == 0  # behind the service's back
    connects = daemon.stderr().count("connected again")
    wait_for(lambda: daemon.stderr().count("connected again") > connects, timeout=30, what="a link drop")
    since = sub.count()
    wait_for(lambda: len(relay_states(sub, since)) >= 3, timeout=30, what="states after the reconnect")
    assert daemon.stop() == 0
    assert relay_writes(sim) == expected
    assert relay_states(sub, since)[-1] == (after if mode != "keep" else flip.upper())
    if mode != "keep":
        assert daemon.stderr().count(f"relay switched {after.lower()} (on_connect)") == 2


def test_auto_off_after_any_on(simulator, daemons, brokers, subscribers, tmp_path):
    broker, sub, sim, config = relay_setup(simulator, brokers, subscribers, tmp_path, relay={"auto_off_after": 2})
    daemon = daemons(config, tmp_path)
    wait_for(lambda: relay_states(sub)[-3:] == ["OFF"] * 3, timeout=30, what="off 2 s after it was first seen on")
    assert run_cli("switch", sim.addresses[0], "on", "--model", "btwattch2").returncode == 0  # another path
    wait_for(lambda: relay_writes_so_far(daemon) >= 2, timeout=30, what="off again")
    since = sub.count()
    sub.client.publish(relay_set(sim), "ON", qos=1)
    wait_for(lambda: relay_writes_so_far(daemon) >= 4 and relay_states(sub, since)[-1:] == ["OFF"], timeout=30,
             what="ON by MQTT, then off by itself")
    assert daemon.stop() == 0
    assert relay_writes(sim) == ["a7 00", "a7 01", "a7 00", "a7 01", "a7 00"]


def relay_writes_so_far(daemon) -> int:
    return len(re.findall(r"relay switched", daemon.stderr()))


# --- relay timers across restarts and outages (issue 27) ------------------------------------------------


def test_auto_off_after_holds_through_a_restart_loop(simulator, daemons, brokers, subscribers, tmp_path):
    """Restarted 4 times within auto_off_after, the service still switches the relay off on time.

    The on-time counts from the meter second the relay was first seen on, saved in relay.json:
    each run carries it on, downtime included, since the relay stayed on meanwhile.
    """
    auto_off = 20
    broker, sub, sim, config = relay_setup(simulator, brokers, subscribers, tmp_path, relay={"auto_off_after": auto_off})
    relay_file = tmp_path / "data" / "relay.json"
    for restart in range(4):
        since = sub.count()
        daemon = daemons(config, tmp_path)
        wait_for(lambda: "ON" in relay_states(sub, since), timeout=30, what=f"run {restart + 1} reading, relay on")
        assert daemon.stop() == 0
        # The premise: the relay is still on when the run ends (else this machine took 20 s for these restarts).
        assert "relay switched" not in daemon.stderr(), f"run {restart + 1} outlived auto_off_after"
    daemon = daemons(config, tmp_path)
    wait_for(lambda: "relay switched off (auto_off_after)" in daemon.stderr(), timeout=60, what="the relay off")
    wait_for(lambda: relay_states(sub)[-2:] == ["OFF"] * 2, timeout=30, what="states with the relay off")
    assert daemon.stop() == 0
    assert relay_writes(sim) == ["a7 00"]
    rows = overload_rows(tmp_path / "data")
    first_on = rows[0][0]
    first_off = next(t for t, watts in rows if watts == 0)
    # On for auto_off_after by the meter's seconds, then off at the next poll (a meter second is truncated: +1).
    assert rows[0][1] > 0 and auto_off <= (first_off - first_on).total_seconds() <= auto_off + 1
    assert json.loads(relay_file.read_text())["meters"][METER] == {"overloaded": False, "last_set": False}


def test_an_outage_between_two_readings_over_the_limit_never_trips_the_latch(
    simulator, daemons, brokers, subscribers, tmp_path
):
    """Over the limit before a 12 s outage and after it: two short stretches, not one long overload."""
    port = free_port()
    broker, sub, sim, config = relay_setup(simulator, brokers, subscribers, tmp_path, port=port,
                                           relay={"max_watts": 0.5, "max_watts_for": 10})
    daemon = daemons(config, tmp_path)
    wait_for(lambda: "ON" in relay_states(sub), timeout=30, what="a reading over the limit")
    sim.stop()
    wait_for(lambda: "reconnecting" in daemon.stderr(), timeout=30, what="the meter gone")
    # The premise: the first stretch was shorter than max_watts_for (else this machine is too slow for it).
    assert "latching" not in daemon.stderr()
    time.sleep(12)  # longer than max_watts_for: on host time since the first reading, this would trip at once
    back = simulator("--model", "btwattch2", "--seed", str(SEED), "--tcp", f"127.0.0.1:{port}")
    wait_for(lambda: "connected again" in daemon.stderr(), timeout=60, what="the meter back")
    since = sub.count()
    wait_for(lambda: relay_states(sub, since)[-4:] == ["ON"] * 4, timeout=30, what="readings after the reconnect")
    assert "latching" not in daemon.stderr() and "relay switched" not in daemon.stderr()
    # Still over the limit: a continuous stretch now trips the latch, 10 meter seconds into it.
    wait_for(lambda: "relay switched off (overload)" in daemon.stderr(), timeout=60, what="the latch after 10 s")
    wait_for(lambda: relay_states(sub)[-2:] == ["OFF"] * 2, timeout=30, what="states with the relay off")
    assert daemon.stop() == 0
    assert relay_writes(back) == ["a7 00"]
    rows = overload_rows(tmp_path / "data")
    (outage,) = [i for i, (a, b) in enumerate(zip(rows, rows[1:])) if (b[0] - a[0]).total_seconds() > 10]
    after = rows[outage + 1:]  # the rows before it were over the limit too
    assert rows[0][1] > 0.5 and after[0][1] > 0.5
    first_off = next(t for t, watts in after if watts == 0)
    assert 10 <= (first_off - after[0][0]).total_seconds() <= 10 + 1
