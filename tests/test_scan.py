"""`scan`: an injected scanner object feeds advertisements; the real CLI meets a machine without BlueZ."""

from __future__ import annotations

import asyncio
import threading

import pytest

bleak_exc = pytest.importorskip("bleak.exc", reason="bleak is the [ble] extra: pip install -e '.[test]'")
from bleak.backends.scanner import AdvertisementData  # noqa: E402

from wattchecker_client.clock import FakeClock  # noqa: E402
from wattchecker_client.commands import scan  # noqa: E402
from wattchecker_client.errors import SetupError  # noqa: E402
from wattchecker_client.protocol import btwattch2  # noqa: E402

from .bluez import bus_without_bluez  # noqa: E402
from .conftest import run_cli  # noqa: E402

PLUG_A = "F0:12:34:56:78:9A"
PLUG_B = "F0:12:34:56:78:9B"
PLUG_C = "F0:12:34:56:78:9C"
CLASSIC = "00:0C:BF:12:34:56"
PHONE = "4C:11:22:33:44:55"


class FakeDevice:
    """Like bleak's BLEDevice: an address and maybe a name."""

    def __init__(self, address: str, name=None) -> None:
        self.address = address
        self.name = name


def advert(name=None, rssi=-60, manufacturer_data=None) -> AdvertisementData:
    return AdvertisementData(
        local_name=name,
        manufacturer_data=manufacturer_data or {},
        service_data={},
        service_uuids=[],
        tx_power=None,
        rssi=rssi,
        platform_data=(),
    )


def values(relay, volts, milliamps, watts) -> dict:
    return {btwattch2.MANUFACTURER_ID: btwattch2.encode_advertisement(btwattch2.Advertisement(relay, volts, milliamps, watts))}


class FakeScanner:
    """Like bleak.BleakScanner: start() begins calling the detection callback on the loop, stop() ends it."""

    made = []

    def __init__(self, detection_callback=None, service_uuids=None, scanning_mode="active", **kwargs) -> None:
        self.callback = detection_callback
        self.kwargs = kwargs
        self.stopped = False
        self.script = []
        FakeScanner.made.append(self)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for device, data in self.script:
            loop.call_soon(self.callback, device, data)

    async def stop(self) -> None:
        self.stopped = True


def scanner_with(script, error=None):
    def factory(**kwargs):
        scanner = FakeScanner(**kwargs)
        scanner.script = script
        if error is not None:
            async def fail():
                raise error
            scanner.start = fail
        return scanner

    return factory


def test_meters_nearest_first_with_their_advertised_values():
    script = [
        (FakeDevice(PLUG_A), advert(None, -70, values(True, 100.5, 250, 25.125))),
        (FakeDevice(PHONE, "Pixel"), advert("Pixel", -40)),
        (FakeDevice(CLASSIC, "WATT CHECKER"), advert(None, -80)),
        (FakeDevice(PLUG_B), advert("BTWATTCH2_9B01", -65)),
        (FakeDevice(PLUG_C), advert("BTWATTCH2_9C01", -90, {btwattch2.MANUFACTURER_ID: b"\x01\x02\x03"})),
        # A later advertisement of plug A: the scan response's name, new values, a new signal.
        (FakeDevice(PLUG_A), advert("BTWATTCH2_9A01", -55, values(False, 101.2, 0, 0))),
    ]
    factory = scanner_with(script)
    sightings, others = scan.scan(factory, 10.0, FakeClock(), threading.Event())
    assert scan.report(sightings, others, 10.0) == [
        "F0:12:34:56:78:9A  BTWATTCH2_9A01    -55 dBm  RS-BTWATTCH2  relay off, 101.2 V, 0 mA, 0 W",
        "F0:12:34:56:78:9B  BTWATTCH2_9B01    -65 dBm  RS-BTWATTCH2  no values advertised yet",
        "00:0C:BF:12:34:56  WATT CHECKER      -80 dBm  REX-BTWATTCH1 (Classic: model btwattch1, pair with PIN 0000)",
        "F0:12:34:56:78:9C  BTWATTCH2_9C01    -90 dBm  RS-BTWATTCH2  advertised values not understood (01 02 03)",
        "4 meters found in 10 s (1 other Bluetooth device ignored)",
    ]
    scanner = FakeScanner.made[-1]
    assert scanner.stopped
    # Classic inquiry as well as LE, so a BTWATTCH1 shows up too.
    assert scanner.kwargs["bluez"] == {"filters": {"Transport": "auto"}}


def test_values_at_the_top_of_their_fields():
    top = values(True, 6553.5, 65535, 16777.215)
    sightings, others = scan.scan(scanner_with([(FakeDevice(PLUG_A), advert("BTWATTCH2_9A01", -50, top))]),
                                  1.0, FakeClock(), threading.Event())
    assert scan.report(sightings, others, 1.0)[0].endswith("relay on, 6553.5 V, 65535 mA, 16777.215 W")


def test_nothing_found_says_what_to_check():
    sightings, others = scan.scan(scanner_with([(FakeDevice(PHONE), advert("Pixel"))]), 3.0, FakeClock(),
                                  threading.Event())
    assert scan.report(sightings, others, 3.0) == [
        "no RATOC meter found in 3 s (1 other Bluetooth device ignored): is it plugged in and near? "
        "A BTWATTCH2 connected to another host (a phone app) may not advertise"
    ]


def test_an_adapter_that_is_off_is_one_line():
    error = bleak_exc.BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"])
    with pytest.raises(SetupError) as caught:
        scan.scan(scanner_with([], error), 1.0, FakeClock(), threading.Event())
    assert str(caught.value) == (
        "cannot scan for meters: the Bluetooth adapter is powered off: `bluetoothctl power on` (and check `rfkill list`)"
    )


# --- the real bleak, on a machine without BlueZ -------------------------------------------


@pytest.mark.process
def test_real_scan_without_a_system_bus_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    result = run_cli("scan", "--seconds", "1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"wattchecker-client: error: cannot scan for meters: cannot reach BlueZ: no D-Bus system bus at "
        f"unix:path={tmp_path}/no-bus (No such file or directory): start D-Bus and Bluetooth "
        "(`sudo systemctl start dbus bluetooth`)\n"
    )


@pytest.mark.process
def test_real_scan_without_bluetoothd_is_one_line(tmp_path, monkeypatch):
    with bus_without_bluez(tmp_path) as address:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        result = run_cli("scan", "--seconds", "1")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "wattchecker-client: error: cannot scan for meters: bluetoothd is not running "
        "(no org.bluez on the D-Bus system bus): `sudo systemctl start bluetooth`\n"
    )


@pytest.mark.process
def test_real_scan_without_bleak_names_the_extra(tmp_path, monkeypatch):
    shadow = tmp_path / "bleak"
    shadow.mkdir()
    (shadow / "__init__.py").write_text('raise ImportError("No module named bleak")\n')  # as if not installed
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = run_cli("scan", "--seconds", "1")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "wattchecker-client: error: scanning for meters needs bleak: pip install 'wattchecker-client[ble]'\n"
