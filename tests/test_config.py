"""Config files: defaults, the original client's config, and one-line errors naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from wattchecker_client.config import (BIGQUERY, DEVICE, GENERAL, INFLUXDB, LIMITS, MQTT, REPORT, ConfigError,
                                       load_config, parse_config)

ROOT = Path(__file__).resolve().parent.parent


def test_the_sample_documents_every_key_and_needs_only_the_address(tmp_path):
    sample = (ROOT / "config_sample.yaml").read_text()
    for key in list(GENERAL) + list(DEVICE) + list(BIGQUERY) + list(INFLUXDB):
        assert f"  {key}:" in sample, f"config_sample.yaml does not document {key}"
    with pytest.raises(ConfigError, match=r"config_sample.yaml:\d+: device.address: '00:0C:BF:XX:XX:XX' is not"):
        load_config(str(ROOT / "config_sample.yaml"))
    edited = tmp_path / "config.yaml"
    edited.write_text(sample.replace("00:0C:BF:XX:XX:XX", "00:0C:BF:12:34:56"))
    config = load_config(str(edited))
    assert config.devices[0].address == "00:0C:BF:12:34:56" and config.devices[0].channel == 6


def test_the_original_clients_config_still_loads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "general:\n  data_buffer_size: 180\n  data_format: \n    - 'csv'\n"
        "device:\n  address: /dev/rfcomm0\n"
        "bigquery:\n  service_account_json: key.json\n  dataset_id: ds\n  table_id: tb\n"
    )
    config = load_config(str(path))
    assert config.general.data_buffer_size == 180
    assert config.general.data_format == ("csv",)
    assert config.general.data_dir == tmp_path / "log"  # relative to the config file
    assert config.bigquery.table_id == "tb"
    assert config.file_stem(config.devices[0]) == "wattchecker-data"


def test_defaults():
    config = parse_config("device:\n  address: sim://\n")
    g = config.general
    assert (g.data_buffer_size, g.data_format, g.poll_interval, g.log_level) == (180.0, ("csv",), 1.0, "INFO")
    assert config.devices[0].name == "wattchecker" and config.bigquery is None


def test_several_meters_get_files_named_after_them():
    config = parse_config(
        "devices:\n  - name: aircon\n    address: 00:0C:BF:00:00:01\n    channel: 6\n"
        "  - name: fridge\n    address: tcp://127.0.0.1:9\n"
    )
    assert [config.file_stem(d) for d in config.devices] == ["wattchecker-data-aircon", "wattchecker-data-fridge"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("general:\n  data_bufer_size: 3\ndevice:\n  address: sim://\n",
         "config.yaml:2: general.data_bufer_size: unknown key; did you mean 'data_buffer_size'?"),
        ("general:\n  data_format: [csv, xml]\ndevice:\n  address: sim://\n",
         "config.yaml:2: general.data_format: unknown format 'xml': use csv and/or json"),
        ("general:\n  poll_interval: 0\ndevice:\n  address: sim://\n",
         "config.yaml:2: general.poll_interval: must be at least 0.001, got 0"),
        ("general:\n  data_buffer_size: true\ndevice:\n  address: sim://\n",
         "config.yaml:2: general.data_buffer_size: must be a number, got True"),
        ("device:\n  address: 00:0C:BF:12:34\n",
         "config.yaml:2: device.address: '00:0C:BF:12:34' is not a Bluetooth MAC"),
        ("device:\n  address: sim://\n  channel: 31\n",
         "config.yaml:3: device.channel: must be at most 30, got 31"),
        ("device:\n  channel: 6\n", "config.yaml:1: device.address: missing (required)"),
        ("general: {}\n", "config.yaml: device.address: missing (required): the meter's MAC"),
        ("device:\n  address: sim://\ndevices:\n  - name: a\n    address: sim://\n",
         "config.yaml:3: devices: use either device: (one meter) or devices: (a list), not both"),
        ("devices:\n  - name: a b\n    address: sim://\n",
         "config.yaml:2: devices[0].name: 'a b' must be 1-40 letters"),
        ("devices:\n  - name: a\n    address: sim://\n  - name: a\n    address: sim://\n",
         "config.yaml:4: devices[1].name: 'a' is used twice"),
        ("bigquery:\n  dataset_id: x\ndevice:\n  address: sim://\n",
         "config.yaml:1: bigquery.table_id: missing (required)"),
        ("devise:\n  address: sim://\n", "config.yaml:1: devise: unknown key; did you mean 'device'?"),
        ("general: [1, 2\n", "config.yaml:2: not valid YAML"),
        ("- 1\n- 2\n", "config.yaml: must be a mapping"),
        ("general:\n  log_level: LOUD\ndevice:\n  address: sim://\n",
         "config.yaml:2: general.log_level: must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'"),
    ],
)
def test_errors_name_the_line_and_key(text, message):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml")
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


SECTIONS = {"general": GENERAL, "device": DEVICE, "bigquery": BIGQUERY, "report": REPORT, "mqtt": MQTT}
REQUIRED = {"device": "  address: sim://\n", "bigquery": "  dataset_id: d\n  table_id: t\n", "mqtt": "  host: h\n"}
FLOAT_KEYS = [(section, key) for section, spec in SECTIONS.items() for key, (_, default) in spec.items()
              if isinstance(default, float)]


@pytest.mark.parametrize("section, key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e300"])
def test_every_number_is_finite_and_bounded(section, key, value):
    text = "".join(f"{name}:\n{REQUIRED.get(name, '')}" + (f"  {key}: {value}\n" if name == section else "")
                   for name in {"device": None, section: None})
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml")
    assert str(info.value).startswith(f"config.yaml:") and f" {section}.{key}: must be " in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.process
def test_the_floats_the_issue_found_fail_check_config_naming_the_key(tmp_path):
    for line, message in [("poll_interval: .nan", "general.poll_interval: must be a finite number, got nan"),
                          ("watchdog_stall: .nan", "general.watchdog_stall: must be a finite number, got nan"),
                          ("data_buffer_size: .inf", "general.data_buffer_size: must be a finite number, got inf"),
                          ("poll_interval: 0.000000001", "general.poll_interval: must be at least 0.001, got 1e-09"),
                          ("status_interval: " + "9" * 400,
                           "general.status_interval: must be at most 86400, got a 400-digit number")]:
        path = tmp_path / "config.yaml"
        path.write_text(f"general:\n  {line}\ndevice:\n  address: sim://\n")
        for command in ("check-config", "run"):  # the service refuses it at start, as check-config does
            result = run_cli(command, "--config", str(path))
            assert (result.returncode, result.stdout) == (2, ""), command
            assert result.stderr == f"wattchecker-client: error: {path}:2: {message}\n", command


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read: No such file or directory"):
        load_config(str(tmp_path / "missing.yaml"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"general:\n  x: \xff\n")
    with pytest.raises(ConfigError, match=r"binary.yaml: not UTF-8 text \(byte 14\)"):
        load_config(str(binary))


def test_a_btwattch2s_relay_section_and_its_one_line_errors():
    from wattchecker_client.config import RELAY
    from wattchecker_client.relay import RelaySettings

    sample = (ROOT / "config_sample.yaml").read_text()
    for key in RELAY:
        assert f"  {key}:" in sample, f"config_sample.yaml does not document relay.{key}"
    device = "device:\n  address: sim://\n  model: btwattch2\n"
    assert parse_config(device).devices[0].relay is None  # the defaults
    config = parse_config(device + "  relay:\n    max_watts: 1500\n    on_connect: Restore\n    auto_off_after: 60\n")
    assert config.devices[0].relay == RelaySettings(max_watts=1500.0, on_connect="restore", auto_off_after=60.0)
    for text, message in [
        ("device:\n  address: sim://\n  relay:\n    max_watts: 1500\n",
         "<config>:3: device.relay: only an RS-BTWATTCH2 (model: btwattch2) has a relay"),
        (device + "  relay:\n    on_connect: toggle\n",
         "<config>:5: device.relay.on_connect: must be one of keep, on, off, restore, got 'toggle'"),
        (device + "  relay:\n    max_wats: 1500\n", "<config>:5: device.relay.max_wats: unknown key; did you mean 'max_watts'?"),
        (device + "  relay:\n    max_watts: -1\n", "<config>:5: device.relay.max_watts: must be at least 0.1, got -1"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(text)
        assert str(err.value) == message


def test_a_btwattch2s_adapter_and_its_one_line_errors():
    plug = "devices:\n  - name: plug\n    address: 'F0:12:34:56:78:9A'\n    model: btwattch2\n"
    assert parse_config(plug).devices[0].adapter is None  # BlueZ's default
    assert parse_config(plug + "    adapter: hci1\n").devices[0].adapter == "hci1"
    for text, message in [
        (plug + "    adapter: usb0\n",
         "<config>:5: devices[0].adapter: must be an adapter's name such as hci0 or hci1 (`bluetoothctl list`), "
         "got 'usb0'"),
        ("device:\n  address: 00:0C:BF:12:34:56\n  adapter: hci1\n",
         "<config>:3: device.adapter: only applies to an RS-BTWATTCH2 (model: btwattch2) at a MAC address"),
        ("device:\n  address: sim://\n  model: btwattch2\n  adapter: hci1\n",
         "<config>:4: device.adapter: only applies to an RS-BTWATTCH2 (model: btwattch2) at a MAC address"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(text)
        assert str(err.value) == message


@pytest.mark.process
def test_check_config_says_what_the_relay_will_do(tmp_path):
    from .conftest import run_cli

    config = tmp_path / "config.yaml"
    config.write_text("devices:\n  - name: heater\n    address: sim://\n    model: btwattch2\n    relay:\n"
                      "      max_watts: 1500\n      auto_off_after: 7200\n  - name: aircon\n    address: sim://\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert ("  relay of heater: at most one switch per 2 s, commands older than 30 s dropped, off above 1500 W "
            "for 10 s (latched until an ON), on connect: keep, off 7200 s after any ON\n") in result.stdout
    assert "relay of aircon" not in result.stdout


def test_an_error_found_after_parsing_names_the_file_and_line_of_its_key():
    """A key file missing at start-up: the same FILE:LINE: key: form as a ConfigError."""
    from wattchecker_client.errors import SetupError

    config = parse_config("device:\n  address: sim://\nbigquery:\n  dataset_id: d\n  table_id: t\n"
                          "  service_account_json: key.json\n", "/etc/w/config.yaml")
    found = config.located(SetupError("cannot read it", key="bigquery.service_account_json"))
    assert str(found) == "/etc/w/config.yaml:6: bigquery.service_account_json: cannot read it"
    left_out = config.located(SetupError("missing", key="bigquery.project_id"))
    assert str(left_out) == "/etc/w/config.yaml:3: bigquery.project_id: missing"  # its section's line
    assert str(config.located(SetupError("no key"))) == "no key"


# Each limit's key -> a config holding VALUE there, with what its section requires besides.
MAC = "'00:0C:BF:12:34:56'"  # a real meter's address: poll_interval's floor is 0.1 for it
LIMIT_CONFIGS = {
    "general": "general:\n  {key}: {value}\ndevice:\n  address: " + MAC + "\n",
    "device": "device:\n  address: " + MAC + "\n  {key}: {value}\n",
    "device.relay": "device:\n  address: " + MAC + "\n  model: btwattch2\n  relay:\n    {key}: {value}\n",
    # stop_watts may not exceed start_watts: the other one set so that both ends of each are allowed
    "device.runs": "device:\n  address: " + MAC + "\n  runs:\n    {other}\n    {key}: {value}\n",
    "bigquery": "bigquery:\n  dataset_id: d\n  table_id: t\n  {key}: {value}\ndevice:\n  address: " + MAC + "\n",
    "report": "report:\n  {key}: {value}\ndevice:\n  address: " + MAC + "\n",
    "mqtt": "mqtt:\n  host: h\n  {key}: {value}\ndevice:\n  address: " + MAC + "\n",
    "http": "http:\n  {key}: '127.0.0.1:{value}'\ndevice:\n  address: " + MAC + "\n",
    "influxdb": "influxdb:\n  url: http://127.0.0.1:8086\n  database: w\n  {key}: {value}\ndevice:\n  address: "
                + MAC + "\n",
}


def limit_config(name: str, value) -> str:
    section, key = name.rsplit(".", 1)
    other = "stop_watts: 0" if key == "start_watts" else "start_watts: 100000"
    return LIMIT_CONFIGS[section].format(key=key, value=value, other=other)


def outside(name: str):
    """A value just below the floor and one just above the ceiling, of the number's own kind."""
    low, high, _ = LIMITS[name]
    step = 1 if name.endswith(("port", "listen", "rows", "bytes", "count", "days", "channel", "argument", "after")) else 0.01
    return [(low - step, "at least"), (high + step, "at most")]


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_every_number_has_a_floor_and_a_ceiling_with_a_one_line_error(name):
    low, high, _ = LIMITS[name]
    parse_config(limit_config(name, low), "config.yaml")  # both ends are allowed
    parse_config(limit_config(name, high), "config.yaml")
    line = limit_config(name, 0).splitlines().index(next(l for l in limit_config(name, 0).splitlines()
                                                        if l.strip().startswith(name.rsplit(".", 1)[1] + ":"))) + 1
    for value, bound in outside(name) + [(int("9" * 400), "at most")]:
        with pytest.raises(ConfigError) as info:
            parse_config(limit_config(name, value), "config.yaml")
        message = str(info.value)
        assert message.startswith(f"config.yaml:{line}: {name}: "), message
        assert "\n" not in message and len(message) < 200
        assert (bound in message) if name != "http.listen" else ("between 1 and 65535" in message
                                                                 or "is not HOST:PORT" in message)


def test_every_number_in_the_specs_is_in_the_limits_table():
    """Nothing numeric escapes the table: each section's numeric defaults have a row."""
    specs = {"general": GENERAL, "device": DEVICE, "bigquery": BIGQUERY, "report": REPORT, "mqtt": MQTT,
             "influxdb": INFLUXDB}
    from wattchecker_client.config import RELAY

    specs["device.relay"] = RELAY
    for section, spec in specs.items():
        for key, (_, default) in spec.items():
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                assert f"{section}.{key}" in LIMITS, f"{section}.{key} has no floor or ceiling"
    for key in ("general.retention_days", "device.channel", "device.relay.max_watts", "device.relay.auto_off_after"):
        assert key in LIMITS  # optional numbers, default None


def test_a_simulator_may_be_polled_faster_than_a_real_meter():
    assert parse_config("general:\n  poll_interval: 0.002\ndevice:\n  address: sim://\n").general.poll_interval == 0.002
    with pytest.raises(ConfigError) as info:
        parse_config("general:\n  poll_interval: 0.05\ndevices:\n  - name: a\n    address: sim://\n"
                     "  - name: b\n    address: /dev/rfcomm0\n", "config.yaml")
    assert str(info.value) == ("config.yaml:2: general.poll_interval: must be at least 0.1 for /dev/rfcomm0 (a meter "
                               "measures once a second; only sim:// and tcp:// simulators may be polled faster), "
                               "got 0.05")


def test_a_number_too_long_for_python_is_a_one_line_error():
    with pytest.raises(ConfigError) as info:
        parse_config("device:\n  address: sim://\n  timeout: " + "9" * 5000 + "\n", "config.yaml")
    assert str(info.value) == "config.yaml:3: a number of 5000 digits is too long to be a setting"


@pytest.mark.parametrize("typed, meant", [("off", "off"), ("on", "on"), ("no", "off"), ("yes", "on"),
                                          ("Off", "off"), ("'off'", "off"), ("restore", "restore")])
def test_on_connect_takes_yamls_unquoted_booleans(typed, meant):
    text = f"device:\n  address: sim://\n  model: btwattch2\n  relay:\n    on_connect: {typed}\n"
    assert parse_config(text).devices[0].relay.on_connect == meant


@pytest.mark.process
def test_check_config_and_run_refuse_a_number_above_its_ceiling_in_one_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"general:\n  data_dir: {tmp_path / 'data'}\n  watchdog_stall: 1.0e-9\n"
                    "device:\n  address: sim://\n")
    for command in ("check-config", "run"):
        result = run_cli(command, "--config", str(path))
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert result.stderr == (f"wattchecker-client: error: {path}:3: general.watchdog_stall: must be at least 0.5, "
                                 "got 1e-09\n")
    assert not (tmp_path / "data").exists()


def test_the_limits_page_shows_the_table_as_it_is():
    from wattchecker_client.config import figure

    page = (ROOT / "docs" / "limits.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert rows == [f"| `{key}` | {figure(low)} | {figure(high)} | {why} |" for key, (low, high, why) in LIMITS.items()]
