"""A meter's id and a host's key: unique without configuration, stable, and kept across an upgrade."""

from __future__ import annotations

import json

import pytest

from wattchecker_client.identity import IDS_FILE, derive, for_data_dir, host_key, meter_id

from .conftest import run_cli


@pytest.mark.parametrize("address, host, expected", [
    ("00:0C:BF:12:34:AB", "pi-a", "000cbf1234ab"),  # a Bluetooth address is the same meter on any host
    ("00:0C:BF:12:34:AB", "pi-b", "000cbf1234ab"),
    ("/dev/rfcomm0", "raspberrypi-1a2b3c", "raspberrypi_1a2b3c_dev_rfcomm0"),
    ("/dev/rfcomm0", "raspberrypi-4d5e6f", "raspberrypi_4d5e6f_dev_rfcomm0"),  # same hostname, another Pi
    ("tcp://192.168.1.5:7000", "kitchen", "kitchen_tcp_192_168_1_5_7000"),
])
def test_a_meters_id(address, host, expected):
    assert meter_id(address, host) == expected


def test_two_pis_at_one_hostname_have_their_own_keys_ids_and_client_ids():
    a = derive({"wattchecker": "/dev/rfcomm0"}, hostname="raspberrypi", machine_id="0" * 32)
    b = derive({"wattchecker": "/dev/rfcomm0"}, hostname="raspberrypi", machine_id="f" * 32)
    assert a.meters["wattchecker"] != b.meters["wattchecker"]
    assert a.host != b.host and a.client_id != b.client_id
    assert a.client_id.startswith("wattchecker-raspberrypi-")
    again = derive({"wattchecker": "/dev/rfcomm0"}, hostname="raspberrypi", machine_id="0" * 32)
    assert again == a  # stable across restarts
    # Two services on one host differ by their meters.
    assert host_key("raspberrypi", "0" * 32, ["m1"]) != host_key("raspberrypi", "0" * 32, ["m2"])


def test_a_new_data_folder_gets_new_ids_and_keeps_them(tmp_path):
    meters = {"wattchecker": "/dev/rfcomm0"}
    first = for_data_dir(tmp_path, meters, hostname="pi", machine_id="ab")
    assert first.meters["wattchecker"].endswith("_dev_rfcomm0") and not first.legacy_topics_due
    assert json.loads((tmp_path / IDS_FILE).read_text()) == {"meters": first.meters}
    (tmp_path / "wattchecker-data.csv").write_text("")  # data written since: the ids stay
    assert for_data_dir(tmp_path, meters, hostname="pi", machine_id="ab").meters == first.meters


def test_a_data_folder_of_the_release_before_ids_keeps_the_old_ids_once_and_for_all(tmp_path):
    (tmp_path / "energy.json").write_text("{}")
    meters = {"wattchecker": "/dev/rfcomm0", "fridge": "00:0C:BF:00:00:01"}
    upgraded = for_data_dir(tmp_path, meters, hostname="pi", machine_id="ab")
    assert upgraded.meters == {"wattchecker": "dev_rfcomm0", "fridge": "000cbf000001"}  # as discovery had them
    assert upgraded.legacy_topics_due
    later = for_data_dir(tmp_path, meters, hostname="pi", machine_id="ab")
    assert later.meters == upgraded.meters and not later.legacy_topics_due  # the old topics are cleared once
    # A meter added after the upgrade is new: it gets a new id.
    more = for_data_dir(tmp_path, {**meters, "tv": "/dev/rfcomm1"}, hostname="pi", machine_id="ab")
    assert more.meters["tv"].endswith("_dev_rfcomm1") and more.meters["tv"] != "dev_rfcomm1"


@pytest.mark.process
def test_check_config_warns_of_two_meters_with_one_id(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"general: {{data_dir: {json.dumps(str(tmp_path / 'data'))}}}\n"
                      "devices:\n  - {name: a, address: '00:0C:BF:12:34:AB'}\n"
                      "  - {name: b, address: '00:0c:bf:12:34:ab'}\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "would share the id" in line]
    assert warnings == ["wattchecker-client: warning: devices: 'a' and 'b' would share the id '000cbf1234ab' "
                        "(their MQTT topics, Home Assistant device and BigQuery device): give each its own address"]
