"""config.yaml -> typed, validated settings, with errors that name the file, line and key.

Drop-in compatible with the original client's config (``general.data_buffer_size``,
``general.data_format``, ``bigquery.*``); every key is documented in
``config_sample.yaml``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, urlsplit

import yaml

from .clock import time_zone
from .errors import SetupError
from .protocol import DEFAULT_MODEL, MODELS
from .relay import ON_CONNECT, RelaySettings
from .runs import RunSettings
from .transport import MAC_RE, is_ble

if TYPE_CHECKING:  # tariff.py is imported where prices are asked for: a service without them never loads it
    from .tariff import Tariff

DEFAULT_NAME = "wattchecker"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, line and key."""


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    address: str
    channel: Optional[int]
    start_argument: int
    timeout: float
    model: str = DEFAULT_MODEL
    relay: Optional[RelaySettings] = None  # a btwattch2's relay: section; None: the defaults
    adapter: Optional[str] = None  # a btwattch2's Bluetooth adapter (hci1); None: BlueZ's default
    runs: RunSettings = RunSettings()  # when the appliance counts as running (runs.py)


@dataclass(frozen=True)
class GeneralConfig:
    data_dir: Path
    data_buffer_size: float
    data_format: Tuple[str, ...]
    poll_interval: float
    hour_close_grace: float
    max_buffered_rows: int
    log_level: str
    log_file: Optional[str]
    log_max_bytes: int
    log_backup_count: int
    status_interval: float
    watchdog_stall: float
    retention_days: Optional[int]
    time_sync_wait: float = 180.0


@dataclass(frozen=True)
class BigQueryConfig:
    service_account_json: Optional[Path]
    dataset_id: str
    table_id: str
    project_id: Optional[str]
    location: Optional[str]
    api_endpoint: Optional[str]
    create_table: bool
    max_backoff: float


@dataclass(frozen=True)
class InfluxConfig:
    """Where the InfluxDB sink writes: 1.x (database, optional user) or 2.x (org, bucket, token)."""

    url: str
    version: int
    database: Optional[str]  # 1.x
    username: Optional[str]  # 1.x, with password_file
    password_file: Optional[Path]
    org: Optional[str]  # 2.x
    bucket: Optional[str]
    token_file: Optional[Path]
    measurement: str
    live: bool  # also a point a second from the live readings, rewritten by the hour's upload
    max_backoff: float


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    username: Optional[str]
    password: Optional[str]
    password_file: Optional[Path]
    tls: bool
    ca_file: Optional[Path]
    client_id: Optional[str]  # None: wattchecker-<hostname>, chosen at start-up
    topic_prefix: str
    discovery_prefix: Optional[str]  # None: no Home Assistant discovery
    publish_interval: float


@dataclass(frozen=True)
class ReportConfig:
    timezone: str
    price: float
    currency: str


@dataclass(frozen=True)
class HttpConfig:
    host: str
    port: int
    allowed_hosts: Tuple[str, ...] = ()  # names besides the loopback ones a Host header may carry
    auth_token_file: Optional[Path] = None  # None: no token asked for

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    source: str
    general: GeneralConfig
    devices: Tuple[DeviceConfig, ...]
    bigquery: Optional[BigQueryConfig]
    report: ReportConfig
    # Meters listed under ``devices:`` get file sets named after them; a
    # single ``device:`` keeps the original client's file names.
    named_files: bool = False
    http: Optional[HttpConfig] = None  # the page, /metrics and /healthz; None: not served
    mqtt: Optional[MqttConfig] = None  # live readings to an MQTT broker / Home Assistant
    influxdb: Optional[InfluxConfig] = None  # closed hours (and optionally live points) to InfluxDB
    tariff: Optional[Tariff] = None  # time-of-use prices (tariff.py); None: report.price at every moment

    def pricing(self) -> Tariff:
        """The tariff: the configured one, else report.price as its one period."""
        from .tariff import Tariff

        return self.tariff if self.tariff is not None else Tariff.flat(self.report.price)

    # Each section's keys -> their line in the file, for errors found after parsing (a key file missing).
    key_lines: Dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def located(self, exc: SetupError) -> SetupError:
        """``exc`` with this file and the line of its key in front, as a ConfigError names them."""
        if exc.key is None:
            return exc
        line = self.key_lines.get(exc.key) or self.key_lines.get(exc.key.partition(".")[0])  # a key left out
        return SetupError(f"{self.source}:{line}: {exc}" if line else f"{self.source}: {exc}")

    def file_stem(self, device: DeviceConfig) -> str:
        return f"wattchecker-data-{device.name}" if self.named_files else "wattchecker-data"

    def file_stems(self) -> Dict[str, str]:
        """Meter name -> the stem of its data files, for every meter."""
        return {d.name: self.file_stem(d) for d in self.devices}


# --- limits: every number the config takes, with the floor and ceiling the service can live with ---
#
# One row per number: (floor, ceiling, why). Both ends are allowed. Each floor
# keeps a loop from spinning or a log from flooding; each ceiling keeps a
# promise (a command's age, a flush, a wait) within what a user would notice.

LIMITS: Dict[str, Tuple[float, float, str]] = {
    "general.data_buffer_size": (0.1, 3600, "seconds of rows held in memory; below 0.1 the writer spins"),
    "general.poll_interval": (0.1, 60, "a meter measures once a second; sim:// and tcp:// may go to 0.001"),
    "general.hour_close_grace": (0, 3600, "seconds an hour file stays open for late rows"),
    "general.max_buffered_rows": (60, 10_000_000, "rows kept while the disk refuses them (about 100 B each)"),
    "general.log_max_bytes": (10_000, 1 << 30, "bytes before the log file rotates"),
    "general.log_backup_count": (0, 100, "rotated log files kept"),
    "general.status_interval": (1, 86_400, "seconds between status lines; below 1 the log floods"),
    "general.watchdog_stall": (0.5, 3600, "seconds without a sign of life; its third is a heartbeat"),
    "general.retention_days": (1, 36_500, "days of hour files kept"),
    "general.time_sync_wait": (0, 86_400, "seconds to wait for the system clock's synchronisation"),
    "device.channel": (1, 30, "RFCOMM channels"),
    "device.start_argument": (0, 255, "one byte of the start command"),
    "device.timeout": (0.5, 600, "seconds a meter may take to answer"),
    "device.relay.min_interval": (0.5, 3600, "seconds between two switchings; spares the relay's contacts"),
    "device.relay.max_watts": (0.1, 1500, "watts; an RS-BTWATTCH2 is rated 15 A at 100 V"),
    "device.relay.max_watts_for": (0, 3600, "seconds over max_watts before it switches off"),
    "device.relay.auto_off_after": (1, 31 * 86_400, "seconds on before it switches off"),
    "device.relay.max_age": (1, 600, "seconds a command may wait for its meter; an older one is dropped"),
    "device.runs.start_watts": (0, 100_000, "W above which the appliance counts as running"),
    "device.runs.stop_watts": (0, 100_000, "W below which a run may end (at most start_watts)"),
    "device.runs.stop_after": (1, 86_400, "seconds below stop_watts that end a run: a day at most"),
    "bigquery.max_backoff": (1, 86_400, "seconds between upload retries at most"),
    "influxdb.max_backoff": (1, 86_400, "seconds between InfluxDB write retries at most"),
    "report.price": (0, 1_000_000, "price of a kWh"),
    "mqtt.port": (1, 65_535, "TCP ports"),
    "mqtt.publish_interval": (1, 3600, "seconds between MQTT state messages; below 1 the broker floods"),
    "http.listen": (1, 65_535, "TCP ports (the port of HOST:PORT)"),
}
# A simulated meter (sim://, or a simulator behind tcp://) may run its clock
# faster than real time (`simulate --clock-speed`), so it may be polled faster.
SIMULATOR_POLL_FLOOR = 0.001
SIMULATOR_PREFIXES = ("sim:", "tcp://")


def _shown(value: Any) -> str:
    """A value for an error line: a 400-digit number or a long string stays one short line."""
    text_ = repr(value)
    if len(text_) <= 40:
        return text_
    if isinstance(value, int):
        return f"a {len(str(abs(value)))}-digit number"
    return f"{text_[:32]}... ({len(text_)} characters)"


def figure(limit: float) -> str:
    """A limit as a user would write it: 10000000, 0.5."""
    return str(int(limit)) if float(limit).is_integer() else f"{limit:g}"


def _in_range(value: Any, low: float, high: float) -> None:
    """Compares ints exactly (a huge int never goes through float, which overflows)."""
    if value < low:
        raise ValueError(f"must be at least {figure(low)}, got {_shown(value)}")
    if value > high:
        raise ValueError(f"must be at most {figure(high)}, got {_shown(value)}")


# --- value checks: each returns the clean value or raises ValueError(problem) ----


def number(key: str, floor: Optional[float] = None) -> Callable[[Any], float]:
    """A finite number within ``key``'s limits (YAML's .nan and .inf parse as floats: each stalls or crashes a loop)."""
    low, high, _ = LIMITS[key]
    low = low if floor is None else floor

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        _in_range(value, low, high)
        return float(value)

    return check


def integer(key: str) -> Callable[[Any], int]:
    """A whole number within ``key``'s limits; 0x.. and 0o.. strings too (a meter's argument byte)."""
    low, high, _ = LIMITS[key]

    def check(value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {value!r}")
        _in_range(value, low, high)
        return value

    return check


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value.strip()


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def endpoint(value: Any) -> str:
    value = text(value)
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def bigquery_id(value: Any) -> str:
    value = text(value)
    if not re.match(r"^[A-Za-z0-9_.:-]{1,1024}$", value):
        raise ValueError(f"{value!r} has characters BigQuery does not allow in names")
    return value


def zone_name(value: Any) -> str:
    value = text(value)
    time_zone(value)
    return value


def http_url(value: Any) -> str:
    url = text(value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{url!r} is not a server's base URL such as http://127.0.0.1:8086")
    try:
        parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    return url.rstrip("/")


def influx_version(value: Any) -> int:
    """Which write API: a choice of two, not a range (so not in LIMITS)."""
    if value not in (1, 2) or isinstance(value, bool):
        raise ValueError(f"must be 1 (InfluxDB 1.x: /write) or 2 (InfluxDB 2.x: /api/v2/write), got {value!r}")
    return value


def measurement_name(value: Any) -> str:
    name = text(value)
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
        raise ValueError(f"{name!r}: use 1-64 letters, digits and _ . : -")
    return name


# --- adapter: which Bluetooth adapter a BLE meter is reached through ---

ADAPTER_RE = re.compile(r"hci[0-9]{1,3}")


def adapter_name(value: Any) -> str:
    """A BlueZ adapter's name, as `bluetoothctl list` and `hciconfig` show it."""
    if not isinstance(value, str) or not ADAPTER_RE.fullmatch(value.strip()):
        raise ValueError(f"must be an adapter's name such as hci0 or hci1 (`bluetoothctl list`), got {value!r}")
    return value.strip()


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.upper() not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return value.upper()

    return check


def formats(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a list of csv and/or json, got {value!r}")
    clean = []
    for item in value:
        if item not in ("csv", "json"):
            raise ValueError(f"unknown format {item!r}: use csv and/or json")
        if item not in clean:
            clean.append(item)
    return tuple(clean)


def address(value: Any) -> str:
    value = text(value)
    if MAC_RE.match(value) or value.startswith(("/", "tcp://", "sim:")):
        return value
    raise ValueError(
        f"{value!r} is not a Bluetooth MAC (00:0C:BF:12:34:56), a tty path (/dev/rfcomm0), "
        "tcp://HOST:PORT or sim://"
    )


def meter_model(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in MODELS:
        raise ValueError(
            f"must be btwattch1 (REX-BTWATTCH1, Bluetooth Classic) or btwattch2 (RS-BTWATTCH2, Bluetooth LE), "
            f"got {value!r}"
        )
    return value.strip().lower()


def on_connect(value: Any) -> str:
    """keep, on, off or restore; YAML reads an unquoted on/off/yes/no as a boolean, as Tasmota's users type it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if not isinstance(value, str) or value.strip().lower() not in ON_CONNECT:
        raise ValueError(f"must be one of {', '.join(ON_CONNECT)}, got {value!r}")
    return value.strip().lower()


def topic(value: Any) -> str:
    value = text(value)
    if any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError(f"{value!r} is not a topic prefix: no +, #, empty levels or leading/trailing /")
    return value


def meter_name(value: Any) -> str:
    value = text(value)
    if not NAME_RE.match(value):
        raise ValueError(f"{value!r} must be 1-40 letters, digits, '-' or '_' (it names files)")
    return value


def listen_address(value: Any) -> Tuple[str, int]:
    """``host:port`` or ``[v6-address]:port``; the host is an IP address or a plain host name."""
    value = text(value)
    bracketed = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$", value)
    plain = re.match(r"^([A-Za-z0-9.-]+):(\d{1,5})$", value)
    match = bracketed or plain
    if match is None:
        raise ValueError(f"{_shown(value)} is not HOST:PORT (127.0.0.1:9750, 0.0.0.0:9750, [::1]:9750)")
    host, port = match.group(1), int(match.group(2))
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {value!r} is not an IPv6 address") from None
    elif re.match(r"^[0-9.]+$", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {value!r} is not an IPv4 address") from None
    low, high, _ = LIMITS["http.listen"]
    if not low <= port <= high:
        raise ValueError(f"port {port} in {value!r} must be between {low} and {high}")
    return host, port


def host_names(value: Any) -> Tuple[str, ...]:
    """Host names (or addresses) the page may be reached by, lower-cased, without a port."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"must be a host name or a list of them, got {value!r}")
    for name in names:
        if not re.match(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)$", name):
            raise ValueError(f"{name!r} is not a host name (no port, no scheme)")
    return tuple(n.lower() for n in names)


REQUIRED = object()
Spec = Dict[str, Tuple[Callable[[Any], Any], Any]]

GENERAL: Spec = {
    "data_dir": (text, "log"),
    "data_buffer_size": (number("general.data_buffer_size"), 180.0),
    "data_format": (formats, ("csv",)),
    # Checked against its meters' links by _poll_interval: only a simulator may be polled below 0.1 s.
    "poll_interval": (number("general.poll_interval", floor=SIMULATOR_POLL_FLOOR), 1.0),
    "hour_close_grace": (number("general.hour_close_grace"), 120.0),
    "max_buffered_rows": (integer("general.max_buffered_rows"), 604_800),
    "log_level": (choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
    "log_file": (optional(text), "wattchecker-client.log"),
    "log_max_bytes": (integer("general.log_max_bytes"), 1_000_000),
    "log_backup_count": (integer("general.log_backup_count"), 5),
    "status_interval": (number("general.status_interval"), 600.0),
    "watchdog_stall": (number("general.watchdog_stall"), 180.0),
    "retention_days": (optional(integer("general.retention_days")), None),
    "time_sync_wait": (number("general.time_sync_wait"), 180.0),
}
DEVICE: Spec = {
    "name": (meter_name, DEFAULT_NAME),
    "address": (address, REQUIRED),
    "model": (meter_model, DEFAULT_MODEL),
    "channel": (optional(integer("device.channel")), None),
    "start_argument": (integer("device.start_argument"), 0),
    "timeout": (number("device.timeout"), 5.0),
    "relay": (lambda value: value, None),  # checked by _device against RELAY
    "adapter": (optional(adapter_name), None),
    "runs": (lambda value: value, None),  # checked by _device against RUNS
}
RUNS: Spec = {
    "start_watts": (number("device.runs.start_watts"), RunSettings.start_watts),
    "stop_watts": (number("device.runs.stop_watts"), RunSettings.stop_watts),
    "stop_after": (integer("device.runs.stop_after"), RunSettings.stop_after),
}
RELAY: Spec = {
    "min_interval": (number("device.relay.min_interval"), 2.0),
    "max_watts": (optional(number("device.relay.max_watts")), None),
    "max_watts_for": (number("device.relay.max_watts_for"), 10.0),
    "on_connect": (on_connect, "keep"),
    "auto_off_after": (optional(number("device.relay.auto_off_after")), None),
    "max_age": (number("device.relay.max_age"), 30.0),
}
BIGQUERY: Spec = {
    "service_account_json": (optional(text), None),
    "dataset_id": (bigquery_id, REQUIRED),
    "table_id": (bigquery_id, REQUIRED),
    "project_id": (optional(bigquery_id), None),
    "location": (optional(text), None),
    "api_endpoint": (optional(endpoint), None),
    "create_table": (boolean, False),
    "max_backoff": (number("bigquery.max_backoff"), 3600.0),
}
REPORT: Spec = {
    "timezone": (zone_name, "Asia/Tokyo"),
    "price": (number("report.price"), 25.0),
    "currency": (text, "JPY"),
}
HTTP: Spec = {
    "listen": (listen_address, ("127.0.0.1", 9750)),
    "allowed_hosts": (host_names, ()),
    "auth_token_file": (optional(text), None),
}
MQTT: Spec = {
    "host": (text, REQUIRED),
    "port": (integer("mqtt.port"), 1883),
    "username": (optional(text), None),
    "password": (optional(text), None),
    "password_file": (optional(text), None),
    "tls": (boolean, False),
    "ca_file": (optional(text), None),
    "client_id": (optional(text), None),
    "topic_prefix": (topic, "wattchecker"),
    "discovery_prefix": (optional(topic), "homeassistant"),
    "publish_interval": (number("mqtt.publish_interval"), 10.0),
}
INFLUXDB: Spec = {
    "url": (http_url, REQUIRED),
    "version": (influx_version, None),  # None: 1
    "database": (optional(text), None),
    "username": (optional(text), None),
    "password_file": (optional(text), None),
    "org": (optional(text), None),
    "bucket": (optional(text), None),
    "token_file": (optional(text), None),
    "measurement": (measurement_name, "wattchecker"),
    "live": (boolean, False),
    "max_backoff": (number("influxdb.max_backoff"), 3600.0),
}
TOP_LEVEL = ("general", "device", "devices", "bigquery", "report", "http", "mqtt", "tariff", "influxdb")


# --- loading -------------------------------------------------------------------------


class _Context:
    """Where we are in the file, so every error can name its line."""

    def __init__(self, source: str, root: Optional[yaml.Node]) -> None:
        self.source = source
        self.root = root

    def error(self, path: Sequence[Any], problem: str) -> ConfigError:
        line = self._line(path)
        where = f"{self.source}:{line}" if line else self.source
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        return ConfigError(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")

    def _line(self, path: Sequence[Any]) -> Optional[int]:
        node = self.root
        line = None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == part:
                        line, node = key_node.start_mark.line + 1, value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def _section(ctx: _Context, path: List[Any], data: Any, spec: Spec) -> Dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ctx.error(path, f"must be a mapping of keys, got {type(data).__name__}")
    _no_unknown_keys(ctx, path, data, spec)
    values = {}
    for key, (check, default) in spec.items():
        if key not in data or (data[key] is None and default is REQUIRED):
            if default is REQUIRED:
                raise ctx.error(path + [key], "missing (required)")
            values[key] = default
            continue
        try:
            values[key] = check(data[key])
        except ValueError as exc:
            raise ctx.error(path + [key], str(exc)) from None
    return values


def _no_unknown_keys(ctx: _Context, path: List[Any], data: dict, known: Sequence[str]) -> None:
    for key in data:
        if key not in known:
            import difflib  # only a config with a mistake pays for it

            hint = difflib.get_close_matches(str(key), list(known), n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
            raise ctx.error(path + [key], f"unknown key{did_you_mean}")


def _devices(ctx: _Context, data: dict) -> Tuple[DeviceConfig, ...]:
    if "device" in data and "devices" in data:
        raise ctx.error(["devices"], "use either device: (one meter) or devices: (a list), not both")
    if "devices" in data:
        listed = data["devices"]
        if not isinstance(listed, list) or not listed:
            raise ctx.error(["devices"], "must be a non-empty list of {name, address, channel}")
        devices = []
        for i, item in enumerate(listed):
            if isinstance(item, dict) and "name" not in item:
                raise ctx.error(["devices", i, "name"], "missing (required: each meter's files are named after it)")
            devices.append(_device(ctx, ["devices", i], item))
        names = [d.name for d in devices]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ctx.error(["devices", i, "name"], f"{name!r} is used twice")
        return tuple(devices)
    if "device" not in data:
        raise ctx.error(
            ["device", "address"],
            "missing (required): the meter's MAC (00:0C:BF:..), /dev/rfcommN, tcp://HOST:PORT or sim://",
        )
    return (_device(ctx, ["device"], data["device"]),)


def _device(ctx: _Context, path: List[Any], data: Any) -> DeviceConfig:
    """One meter's settings, with the keys that only make sense for the other model refused."""
    values = _section(ctx, path, data, DEVICE)
    where = values["address"]
    if values["model"] == "btwattch2":
        for key in ("channel", "start_argument"):
            if key in data:
                raise ctx.error(path + [key], "only applies to a btwattch1 (REX-BTWATTCH1); an RS-BTWATTCH2 "
                                "(model: btwattch2) is reached over Bluetooth LE by its MAC: remove it")
        if where.startswith("/dev/rfcomm"):
            raise ctx.error(path + ["address"], f"{where} is a Bluetooth Classic (RFCOMM) tty, but an "
                            "RS-BTWATTCH2 speaks Bluetooth LE: use its MAC (`wattchecker-client scan` lists it)")
    if values["relay"] is not None:
        if values["model"] != "btwattch2":
            raise ctx.error(path + ["relay"], "only an RS-BTWATTCH2 (model: btwattch2) has a relay")
        values["relay"] = RelaySettings(**_section(ctx, path + ["relay"], values["relay"], RELAY))
    if values["adapter"] is not None and not is_ble(where, values["model"]):
        raise ctx.error(path + ["adapter"], "only applies to an RS-BTWATTCH2 (model: btwattch2) at a MAC address")
    values["runs"] = _runs(ctx, path + ["runs"], values["runs"])
    simulated = dict(parse_qsl(urlsplit(where).query)).get("model") if where.startswith("sim:") else None
    if simulated is not None and simulated != values["model"]:
        raise ctx.error(path + ["model"], f"is {values['model']}, but the address simulates a {simulated}: "
                        f"set model: {simulated}")
    return DeviceConfig(**values)


def _runs(ctx: _Context, path: List[Any], data: Any) -> RunSettings:
    runs = RunSettings(**_section(ctx, path, data, RUNS))
    if runs.stop_watts > runs.start_watts:
        raise ctx.error(path + ["stop_watts"], f"must be at most start_watts ({runs.start_watts:g}), "
                        f"got {runs.stop_watts:g}")
    return runs


def _mqtt(ctx: _Context, data: Any, base: Path) -> MqttConfig:
    values = _section(ctx, ["mqtt"], data, MQTT)
    if values["password"] is not None and values["password_file"] is not None:
        raise ctx.error(["mqtt", "password"], "use either password or password_file, not both")
    for key in ("password", "password_file"):
        if values[key] is not None and values["username"] is None:
            raise ctx.error(["mqtt", key], "needs a username too")
    if values["ca_file"] is not None and not values["tls"]:
        raise ctx.error(["mqtt", "ca_file"], "needs tls: true (it pins the broker's TLS certificate)")
    for key in ("password_file", "ca_file"):
        if values[key] is not None:
            values[key] = (base / values[key]).resolve()
    return MqttConfig(**values)


def _http(ctx: _Context, data: Any, base: Path) -> HttpConfig:
    values = _section(ctx, ["http"], data, HTTP)
    token = values["auth_token_file"]
    return HttpConfig(*values["listen"], values["allowed_hosts"], (base / token).resolve() if token else None)


def _influxdb(ctx: _Context, data: Any, base: Path) -> InfluxConfig:
    """An influxdb: section: the keys of its version, each needed one present, the others refused."""
    values = _section(ctx, ["influxdb"], data, INFLUXDB)
    values["version"] = values["version"] or 1
    needed = ("database",) if values["version"] == 1 else ("org", "bucket", "token_file")
    other = ("org", "bucket", "token_file") if values["version"] == 1 else ("database", "username", "password_file")
    for key in other:
        if values[key] is not None:
            raise ctx.error(["influxdb", key], f"only applies to InfluxDB {3 - values['version']}.x "
                            f"(version: {3 - values['version']}); this section is for version {values['version']}")
    for key in needed:
        if values[key] is None:
            raise ctx.error(["influxdb", key], f"missing (required for InfluxDB {values['version']}.x)")
    if (values["username"] is None) != (values["password_file"] is None):
        key = "password_file" if values["username"] is not None else "username"
        raise ctx.error(["influxdb", key], "missing: username and password_file go together")
    for key in ("password_file", "token_file"):
        if values[key] is not None:
            values[key] = (base / values[key]).resolve()
    return InfluxConfig(**values)


def _poll_interval(ctx: _Context, interval: float, devices: Sequence[DeviceConfig]) -> None:
    """Below 0.1 s only for simulated meters: a real one measures once a second, so faster polls only load its link."""
    floor = LIMITS["general.poll_interval"][0]
    real = [d.address for d in devices if not d.address.startswith(SIMULATOR_PREFIXES)]
    if interval < floor and real:
        raise ctx.error(["general", "poll_interval"], f"must be at least {figure(floor)} for {real[0]} (a meter "
                        f"measures once a second; only sim:// and tcp:// simulators may be polled faster), "
                        f"got {interval:g}")


def _long_number(root: Optional[yaml.Node]) -> Tuple[Optional[int], int]:
    """The line and length of the first number too long for Python to read (over 4300 digits)."""
    nodes = [root]
    while nodes:
        node = nodes.pop(0)
        if isinstance(node, yaml.ScalarNode) and len(node.value) > 4000:
            return node.start_mark.line + 1, len(node.value)
        if isinstance(node, yaml.MappingNode):
            nodes.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            nodes.extend(node.value)
    return None, 0


def parse_config(text_: str, source: str = "<config>") -> Config:
    """Validate YAML text; relative paths are relative to the config file's folder."""
    try:
        root = yaml.compose(text_, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text_)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    except ValueError:  # Python refuses to read an integer of over 4300 digits
        line, digits = _long_number(root)
        raise ConfigError(f"{source}:{line}: a number of {digits} digits is too long to be a setting") from None
    ctx = _Context(source, root)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ctx.error([], "must be a mapping with general:, device: and optionally bigquery:")
    _no_unknown_keys(ctx, [], data, TOP_LEVEL)
    general = _section(ctx, ["general"], data.get("general"), GENERAL)
    base = Path(source).resolve().parent if source != "<config>" else Path.cwd()
    general["data_dir"] = (base / general["data_dir"]).resolve()
    bigquery = None
    if data.get("bigquery") is not None:
        values = _section(ctx, ["bigquery"], data["bigquery"], BIGQUERY)
        if values["service_account_json"] is not None:
            values["service_account_json"] = (base / values["service_account_json"]).resolve()
        bigquery = BigQueryConfig(**values)
    report = ReportConfig(**_section(ctx, ["report"], data.get("report"), REPORT))
    # A bare ``http:`` line turns the page on with its defaults.
    http = _http(ctx, data["http"], base) if "http" in data else None
    mqtt = _mqtt(ctx, data["mqtt"], base) if "mqtt" in data else None
    influxdb = _influxdb(ctx, data["influxdb"], base) if data.get("influxdb") is not None else None
    devices = _devices(ctx, data)
    _poll_interval(ctx, general["poll_interval"], devices)
    tariff = None
    if data.get("tariff") is not None:
        from .tariff import parse_tariff

        tariff = parse_tariff(data["tariff"], ctx.error)
    return Config(source, GeneralConfig(**general), devices, bigquery, report, "devices" in data, http=http,
                  mqtt=mqtt, tariff=tariff, influxdb=influxdb, key_lines=_key_lines(root))


def _key_lines(root: Optional[yaml.Node]) -> Dict[str, int]:
    """``section`` and ``section.key`` -> line, for the top-level sections' own keys."""
    lines: Dict[str, int] = {}
    for key_node, value_node in root.value if isinstance(root, yaml.MappingNode) else ():
        lines[key_node.value] = key_node.start_mark.line + 1
        for sub_key, _ in value_node.value if isinstance(value_node, yaml.MappingNode) else ():
            lines[f"{key_node.value}.{sub_key.value}"] = sub_key.start_mark.line + 1
    return lines


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_config(content, path)

