"""Live readings to an MQTT broker, announced to Home Assistant by MQTT discovery.

One thread reads the live state (the newest reading per meter, never a queue
that backs up) and publishes; paho-mqtt's own thread does the network. The
publisher cannot slow a reader or the writer: it only takes snapshots. While
the broker is away nothing is queued: the files hold every second, and the
live values of the outage are not replayed.

Topics, with ``P`` the topic prefix (``wattchecker``), ``<host>`` this service's
key and ``<meter>`` a meter's id (identity.py: unique across Pis on one broker):

- ``P/<host>/status``: ``online``, retained; the client's last will makes it ``offline``
- ``P/<meter>/availability``: ``online`` while the meter's link is up, retained
- ``P/<meter>/state``: JSON ``{"timestamp", "W", "V", "A", "energy_kWh"[, "relay"]}``
- ``P/<meter>/relay/set``: ``ON``/``OFF`` switches an RS-BTWATTCH2's relay
- ``P/<meter>/run``: ``{"event_type": "finished", "kWh", "duration_s", "cost", ...}`` once per finished
  run (runs.py), not retained; the state's ``running`` field is ``ON`` while a run goes on
- ``<discovery prefix>/<component>/wattchecker_<meter>/<entity>/config``:
  Home Assistant discovery, retained, sent again on every (re)connect and
  whenever Home Assistant says ``online`` on ``<discovery prefix>/status``
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import ssl
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__, protocol
from .clock import Backoff, Clock
from .config import DeviceConfig, MqttConfig
from .errors import SetupError
from .identity import Identity, derive
from .live import LiveState, MeterLive
from .relay import RelayStale, RelaySuperseded
from .runs import Run
from .secretfile import read_secret
from .transport import MAC_RE

log = logging.getLogger(__name__)

MANUFACTURER = "RATOC Systems"
INSTALL_HINT = "pip install 'wattchecker-client[mqtt]'"
KEEPALIVE = 60
WAKE_INTERVAL = 0.5  # seconds: how soon a (re)connect is announced when no reading wakes the thread
# A peer that takes the connection but never answers (not a broker: a wrong port) is a failed attempt.
CONNACK_TIMEOUT = 10.0
# A relay command is ON or OFF: anything longer is dropped before it is decoded (a 20 MB
# payload must not be copied, decoded or logged), and a warning quotes at most this much.
MAX_COMMAND_BYTES = 8
QUOTED_CHARS = 16
WARNING_WINDOW = 60.0  # bad commands: one warning, then one count per minute

EPOCH = dt.datetime(1970, 1, 1)
RelaySwitch = Callable[[Optional[bool]], "Future[bool]"]

# entity -> (state field, discovery keys); the value_template picks the field
SENSORS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "power": ("W", {"name": "Power", "device_class": "power", "unit_of_measurement": "W",
                    "state_class": "measurement", "suggested_display_precision": 1}),
    "voltage": ("V", {"name": "Voltage", "device_class": "voltage", "unit_of_measurement": "V",
                      "state_class": "measurement", "suggested_display_precision": 1}),
    "current": ("A", {"name": "Current", "device_class": "current", "unit_of_measurement": "A",
                      "state_class": "measurement", "suggested_display_precision": 3}),
    "energy": ("energy_kWh", {"name": "Energy", "device_class": "energy", "unit_of_measurement": "kWh",
                              "state_class": "total_increasing", "suggested_display_precision": 3}),
}


def paho_library() -> Any:
    """paho.mqtt.client, 2.x; SetupError naming the extra to install otherwise."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise SetupError(f"the paho-mqtt library is not installed: {INSTALL_HINT}", key="mqtt") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise SetupError(f"paho-mqtt 2.x is needed (an older one is installed): {INSTALL_HINT} --upgrade", key="mqtt")
    return mqtt


def read_password(config: MqttConfig) -> Optional[str]:
    if config.password_file is None:
        return config.password
    return read_secret("mqtt.password_file", config.password_file)[0]


def check_setup(config: MqttConfig) -> List[str]:
    """What start-up checks of an mqtt: section, without connecting: the library and the files."""
    paho_library()
    warnings = []
    if config.password_file is not None:
        mode_warning = read_secret("mqtt.password_file", config.password_file)[1]
        warnings += [mode_warning] if mode_warning else []
    if config.ca_file is not None:
        try:
            config.ca_file.read_bytes()
        except OSError as exc:
            raise SetupError(f"cannot read {config.ca_file}: {exc.strerror or exc}: copy the broker's CA "
                             "certificate there, or remove ca_file to trust the system's CAs", key="mqtt.ca_file") from None
    if config.username is not None and not config.tls:
        warnings.append(f"mqtt: the password goes to {config.host} unencrypted (tls: false)")
    return warnings


def client_id(config: MqttConfig, identity: Optional[Identity] = None) -> str:
    """The configured one, else one per host (and service): two Pis at one hostname never share it."""
    if config.client_id:
        return config.client_id
    return identity.client_id if identity is not None else f"wattchecker-{socket.gethostname()}"


def summary(config: MqttConfig, identity: Optional[Identity] = None) -> str:
    """One line for check-config."""
    user = f"{config.username}@" if config.username else ""
    tls = " with TLS" + (f" pinned to {config.ca_file}" if config.ca_file else "") if config.tls else ""
    discovery = f"discovery under {config.discovery_prefix}/" if config.discovery_prefix else "no discovery"
    return (f"{user}{config.host}:{config.port}{tls} as {client_id(config, identity)}, states on "
            f"{config.topic_prefix}/<meter>/state every {config.publish_interval:g} s, {discovery}")


def quote(payload: bytes) -> str:
    """At most ``QUOTED_CHARS`` of a payload, for a log line; the rest is never decoded."""
    head = bytes(payload[:QUOTED_CHARS]).decode("utf-8", "replace")
    return repr(head) + ("..." if len(payload) > QUOTED_CHARS else "")


@dataclass(frozen=True)
class Topics:
    prefix: str
    host: Optional[str] = None  # None: the one status topic of releases before meter ids

    @property
    def status(self) -> str:
        return f"{self.prefix}/{self.host}/status" if self.host else f"{self.prefix}/status"

    def state(self, meter: str) -> str:
        return f"{self.prefix}/{meter}/state"

    def availability(self, meter: str) -> str:
        return f"{self.prefix}/{meter}/availability"

    def relay_set(self, meter: str) -> str:
        return f"{self.prefix}/{meter}/relay/set"

    def run_event(self, meter: str) -> str:
        return f"{self.prefix}/{meter}/run"


def state_payload(live: MeterLive) -> Dict[str, Any]:
    """The state message of one meter's last reading."""
    m = live.measurement
    payload = {
        "timestamp": m.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "W": m.watts,
        "V": m.volts,
        "A": m.milliamps / 1000,
    }
    if live.energy_known:  # not while a first count of the files runs: Home Assistant keeps its last value
        payload["energy_kWh"] = round(live.energy_joules / 3_600_000, 6)
    if live.relay is not None:
        payload["relay"] = "ON" if live.relay else "OFF"
    if live.overloaded is not None:
        payload["overloaded"] = "ON" if live.overloaded else "OFF"
    payload["running"] = "ON" if live.run is not None else "OFF"
    payload["run_seconds"] = live.run.seconds if live.run is not None else 0
    return payload


def run_payload(run: Run) -> Dict[str, Any]:
    """The ``finished`` event of one run: what ``report --runs`` shows of it, to the same rounding as its CSV."""
    def stamp(t: int) -> str:
        return (EPOCH + dt.timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {"event_type": "finished", "kWh": round(run.kwh, 6), "duration_s": run.seconds,
            "cost": round(run.cost, 4), "peak_W": run.peak_watts, "start": stamp(run.start), "end": stamp(run.end)}


def discovery_messages(
    config: MqttConfig, device: DeviceConfig, has_relay: bool = False, identity: Optional[Identity] = None
) -> List[Tuple[str, Dict[str, Any]]]:
    """(topic, payload) of every entity of one meter: one Home Assistant device, its sensors, its switch."""
    identity = identity or derive({device.name: device.address})
    topics = Topics(config.topic_prefix, identity.host)
    meter = identity.meters[device.name]
    node = f"wattchecker_{meter}"
    ha_device: Dict[str, Any] = {
        "identifiers": [node],
        "name": device.name,
        "manufacturer": MANUFACTURER,
        "model": protocol.dialect(device.model).product,
        "sw_version": __version__,
    }
    if MAC_RE.match(device.address.strip()):
        ha_device["connections"] = [["bluetooth", device.address.strip().lower()]]
    common = {
        "state_topic": topics.state(meter),
        "availability": [{"topic": topics.status}, {"topic": topics.availability(meter)}],
        "availability_mode": "all",
        "device": ha_device,
        "origin": {"name": "wattchecker-client", "sw_version": __version__},
    }
    expire_after = int(max(60, 3 * config.publish_interval))
    messages = []
    for entity, (field, keys) in SENSORS.items():
        # is_defined: a message without the field leaves the entity as it was (energy while it is counted)
        template = f"{{{{ value_json.{field} | is_defined }}}}" if entity == "energy" else f"{{{{ value_json.{field} }}}}"
        payload = {**keys, "unique_id": f"{node}_{entity}", "value_template": template,
                   "expire_after": expire_after, **common}
        messages.append((f"{config.discovery_prefix}/sensor/{node}/{entity}/config", payload))
    # Runs (runs.py): a running sensor from the state, and an event entity that fires once per finished run.
    payload = {"name": "Running", "unique_id": f"{node}_running", "device_class": "running",
               "value_template": "{{ value_json.running | is_defined }}", "payload_on": "ON", "payload_off": "OFF",
               **common}
    messages.append((f"{config.discovery_prefix}/binary_sensor/{node}/running/config", payload))
    payload = {"name": "Run", "unique_id": f"{node}_run", "event_types": ["finished"], **common,
               "state_topic": topics.run_event(meter)}
    messages.append((f"{config.discovery_prefix}/event/{node}/run/config", payload))
    if has_relay:
        payload = {"name": "Relay", "unique_id": f"{node}_relay", "device_class": "outlet",
                   "command_topic": topics.relay_set(meter), "payload_on": "ON", "payload_off": "OFF",
                   "value_template": "{{ value_json.relay }}", "state_on": "ON", "state_off": "OFF", **common}
        messages.append((f"{config.discovery_prefix}/switch/{node}/relay/config", payload))
        # The over-power latch (relay.max_watts): a problem until an explicit ON clears it.
        payload = {"name": "Overloaded", "unique_id": f"{node}_overloaded", "device_class": "problem",
                   "value_template": "{{ value_json.overloaded | is_defined }}", "payload_on": "ON",
                   "payload_off": "OFF", **common}
        messages.append((f"{config.discovery_prefix}/binary_sensor/{node}/overloaded/config", payload))
    return messages


def describe(exc: BaseException, tls: bool) -> str:
    """One line a user can act on, for a failed connection attempt."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate is not trusted ({exc.verify_message}); check mqtt.ca_file"
    if isinstance(exc, ssl.SSLError) or (tls and isinstance(exc, (ConnectionResetError, ConnectionAbortedError))):
        why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        return f"TLS failed ({why}); does the broker speak TLS on this port? (mqtt.tls, mqtt.port)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is the broker running, and is mqtt.port right?"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer (timed out)"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


@dataclass
class MqttStats:
    """Counters for the status line."""

    connects: int = 0
    connect_failures: int = 0
    outages: int = 0
    published: int = 0
    dropped: int = 0
    relay_commands: int = 0
    bad_commands: int = 0
    retained_commands: int = 0


class WarningWindow:
    """One warning at once, then the count of the others once per window: a flood costs a line a minute."""

    def __init__(self, clock: Clock, window: float = WARNING_WINDOW) -> None:
        self.clock = clock
        self.window = window
        self._lock = threading.Lock()  # paho's thread notes, the publisher's flushes
        self._opened: Optional[float] = None
        self._more = 0

    def note(self, message: str) -> None:
        self.flush()
        with self._lock:
            if self._opened is not None:
                self._more += 1
                return
            self._opened = self.clock.monotonic()
        log.warning("%s", message)

    def flush(self, force: bool = False) -> None:
        with self._lock:
            if self._opened is None or (not force and self.clock.monotonic() - self._opened < self.window):
                return
            more, self._opened, self._more = self._more, None, 0
        if more:
            log.warning("mqtt: %d more bad relay commands ignored in the last %g s", more, self.window)


class Publisher:
    """The MQTT thread's work: connect with backoff, announce, publish the live state."""

    def __init__(
        self,
        config: MqttConfig,
        live: LiveState,
        devices: Sequence[DeviceConfig],
        clock: Clock,
        *,
        relays: Optional[Dict[str, RelaySwitch]] = None,
        backoff: Optional[Backoff] = None,
        identity: Optional[Identity] = None,
    ) -> None:
        self.config = config
        self.live = live
        self.devices = list(devices)
        self.clock = clock
        self.relays = relays or {}
        self.backoff = backoff or Backoff()
        self.identity = identity or derive({d.name: d.address for d in devices})
        self.ids = self.identity.meters  # meter name -> the id in its topics
        self.topics = Topics(config.topic_prefix, self.identity.host)
        self.stats = MqttStats()
        self.where = f"{config.host}:{config.port}"
        self._client: Any = None
        self._session = False  # paho's network thread runs
        self._down = threading.Event()  # no session: connect (again)
        self._down.set()
        self._up = threading.Event()  # the broker accepted us
        self._announce = threading.Event()
        self._outage_since: Optional[float] = None
        self._available: Dict[str, bool] = {}  # per meter, as last published
        self._sent: Dict[str, Any] = {}  # per meter, the meter time of the last state sent
        self._runs_sent: Dict[str, int] = {}  # per meter, the number of the last finished run announced
        self._closing = False
        self._session_started = 0.0
        self._bad_commands = WarningWindow(clock)
        self._retained_told: set = set()

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    # --- the thread ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: keep a session, publish what changes. Never raises for a broker's faults."""
        version = 0
        first = True
        try:
            while not stop.is_set():
                if self._down.is_set():
                    self._end_session()
                    if not first and self.clock.sleep(self.backoff.next_delay(), stop):
                        break
                    first = False
                    self._start_session()
                    continue
                version = self.live.wait(version, WAKE_INTERVAL)
                self._bad_commands.flush()
                if self._up.is_set():
                    self._publish()
                elif self.clock.monotonic() - self._session_started > CONNACK_TIMEOUT:
                    self._failed(f"no answer within {CONNACK_TIMEOUT:g} s: is it an MQTT broker (mqtt.port, mqtt.tls)?")
                    self._down.set()
        finally:
            self._close()

    def _start_session(self) -> None:
        try:
            if self._client is None:
                self._client = self._make_client()
            self._client.connect(self.config.host, self.config.port, keepalive=KEEPALIVE)
        except (OSError, ValueError) as exc:
            self._failed(describe(exc, self.config.tls))
            return
        self._down.clear()
        self._session_started = self.clock.monotonic()
        try:
            self._client.loop_start()
        except RuntimeError as exc:  # no thread to be had now (the unit's TasksMax): try again later
            self._failed(f"cannot start its network thread ({exc})")
            self._drop_client()
            return
        self._session = True

    def _drop_client(self) -> None:
        """Forget a client whose loop never started (paho keeps the unstarted thread): the next try makes a new one."""
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        self._client = None
        self._down.set()

    def _end_session(self) -> None:
        if self._session:
            self._client.loop_stop()
            self._session = False

    def _make_client(self) -> Any:
        mqtt = paho_library()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id(self.config, self.identity),
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, read_password(self.config))
        if self.config.tls:
            client.tls_set(ca_certs=str(self.config.ca_file) if self.config.ca_file else None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        for name in self.relays:
            client.message_callback_add(self.topics.relay_set(self.ids[name]), self._on_relay_command)
        if self.config.discovery_prefix is not None:
            client.message_callback_add(self._birth_topic, self._on_home_assistant_status)
        return client

    @property
    def _birth_topic(self) -> str:
        return f"{self.config.discovery_prefix}/status"

    # --- paho's thread -----------------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._failed(f"the broker refused the connection: {reason}; check mqtt.username and the password")
            return
        self.stats.connects += 1
        if self._outage_since is not None:
            log.info("mqtt: connected again to %s after %.0f s", self.where, self.clock.monotonic() - self._outage_since)
        else:
            log.info("mqtt: connected to %s as %s", self.where, client_id(self.config, self.identity))
        self._outage_since = None
        self.backoff.reset()
        self._up.set()
        self._announce.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was_up = self._up.is_set()
        self._up.clear()
        self._down.set()
        if was_up and not self._closing:
            self.stats.outages += 1
            self._outage_since = self.clock.monotonic()
            log.warning("mqtt: lost the broker at %s (%s); reconnecting, readings and files carry on",
                        self.where, reason)

    def _failed(self, why: str) -> None:
        """A failed attempt: logged once per outage, counted always."""
        self.stats.connect_failures += 1
        if self._outage_since is None:
            self.stats.outages += 1
            self._outage_since = self.clock.monotonic()
            log.warning("mqtt: cannot connect to %s: %s; retrying with backoff, readings and files carry on",
                        self.where, why)
        else:
            log.debug("mqtt: still cannot connect to %s: %s", self.where, why)

    def _on_home_assistant_status(self, client: Any, userdata: Any, message: Any) -> None:
        """Home Assistant (re)started: announce again and send every state at once, as Zigbee2MQTT does."""
        if message.payload.strip().lower() == b"online":
            self._sent.clear()
            self._announce.set()

    def _on_relay_command(self, client: Any, userdata: Any, message: Any) -> None:
        """ON or OFF, sent now: a retained, oversized or unknown payload is ignored, and said so sparingly."""
        topic = message.topic
        meter_id = topic[len(self.config.topic_prefix) + 1:].split("/", 1)[0]
        meter = next((name for name, i in self.ids.items() if i == meter_id), meter_id)
        payload = message.payload
        if message.retain:
            self._retained(topic)
            return
        if len(payload) > MAX_COMMAND_BYTES:
            self._bad(topic, f"a {len(payload)}-byte payload {quote(payload)}")
            return
        command = payload.decode("ascii", "replace").strip().upper()
        if command not in ("ON", "OFF") or meter not in self.relays:
            self._bad(topic, quote(payload))
            return
        self.stats.relay_commands += 1
        future = self.relays[meter](command == "ON")
        future.add_done_callback(lambda f: self._relay_done(meter, command, f))

    def _bad(self, topic: str, what: str) -> None:
        self.stats.bad_commands += 1
        self._bad_commands.note(f"mqtt: ignoring {what} on {topic} (send ON or OFF)")

    def _retained(self, topic: str) -> None:
        """A retained command would switch the relay at every restart and reconnect: ignored, told once."""
        self.stats.retained_commands += 1
        if topic in self._retained_told:
            return
        self._retained_told.add(topic)
        log.warning("mqtt: ignoring a retained command on %s: a command is for now, not for every restart; "
                    "clear it with `mosquitto_pub -r -n -t %s`", topic, topic)

    def _relay_done(self, meter: str, command: str, future: "Future[bool]") -> None:
        exc = future.exception()
        if exc is not None and not isinstance(exc, (RelayStale, RelaySuperseded)):  # those the reader told
            log.warning("mqtt: %s: relay %s failed: %s", meter, command, exc)
        self._sent.pop(meter, None)  # send the next state at once: it carries the real relay state

    # --- publishing (the publisher thread) ----------------------------------------------------

    def _publish(self) -> None:
        snapshot = self.live.snapshot()
        if self._announce.is_set():
            self._announce.clear()
            self._send_announcement()
        for name, state in snapshot.items():
            if self._available.get(name) != state.connected:
                self._send(self.topics.availability(self.ids[name]), "online" if state.connected else "offline",
                           retain=True)
                self._available[name] = state.connected
            self._send_state(name, state)
            self._send_runs(name, state)

    def _send_runs(self, name: str, state: MeterLive) -> None:
        """Each run finished since start-up, once: those of an outage too, while the live state keeps them."""
        for number, run in state.recent_runs:
            if number > self._runs_sent.get(name, 0):
                if not self._send(self.topics.run_event(self.ids[name]), json.dumps(run_payload(run))):
                    return  # not connected: sent once connected again
                self._runs_sent[name] = number

    def _send_announcement(self) -> None:
        """Discovery, then availability: Home Assistant sees entities before their values."""
        if self.identity.legacy_topics_due:
            self._clear_legacy_topics()
        if self.config.discovery_prefix is not None:
            for device in self.devices:
                for topic, payload in discovery_messages(self.config, device, device.name in self.relays,
                                                         self.identity):
                    self._send(topic, json.dumps(payload), retain=True)
            self._client.subscribe(self._birth_topic, qos=1)
        self._send(self.topics.status, "online", retain=True)
        self._available.clear()
        for name in self.relays:
            self._client.subscribe(self.topics.relay_set(self.ids[name]), qos=1)

    def _clear_legacy_topics(self) -> None:
        """Once, after an upgrade: the retained status and availability of the old topic layout
        (``P/status``, ``P/<name>/availability``), which nothing would update again."""
        old = [Topics(self.config.topic_prefix).status]
        old += [Topics(self.config.topic_prefix).availability(d.name) for d in self.devices]
        kept = {self.topics.status} | {self.topics.availability(i) for i in self.ids.values()}
        for topic in old:
            if topic not in kept and self._send(topic, "", retain=True):
                log.info("mqtt: cleared the retained %s of the old topic layout", topic)
        self.identity = Identity(self.identity.meters, self.identity.host)

    def _send_state(self, name: str, state: MeterLive) -> None:
        m = state.measurement
        last = self._sent.get(name)
        if m is None or (last is not None and (m.time - last).total_seconds() < self.config.publish_interval):
            return
        if self._send(self.topics.state(self.ids[name]), json.dumps(state_payload(state)), qos=0):
            self.stats.published += 1
        self._sent[name] = m.time

    def _send(self, topic: str, payload: str, retain: bool = False, qos: int = 1) -> bool:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != 0:  # not connected any more: dropped, not queued (the files have it)
            self.stats.dropped += 1
            return False
        return True

    def _close(self) -> None:
        """A clean goodbye: ``offline`` on the status topic (the will only fires on a lost link)."""
        self._bad_commands.flush(force=True)
        if self._client is None:
            return
        self._closing = True
        if self._up.is_set():
            try:
                self._client.publish(self.topics.status, "offline", qos=1, retain=True).wait_for_publish(2.0)
            except (RuntimeError, ValueError) as exc:
                log.debug("mqtt: offline status not confirmed: %s", exc)
            self._client.disconnect()
        self._end_session()
