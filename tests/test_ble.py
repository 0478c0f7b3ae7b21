"""The BLE link: real socketpairs and a real asyncio loop; only the bleak client object is a stand-in.

``FakeBleakClient`` behaves like ``bleak.BleakClient`` (async connect,
disconnect, start_notify, stop_notify, write_gatt_char; ``services`` with the
Nordic UART characteristics and their properties; bleak's own exception types)
and carries the meter's answers back as notifications split at 20 bytes, as a
real RS-BTWATTCH2 does. ``Radio`` is the meter as the air sees it: one device,
met by a new client object at each connect, with knobs for what BlueZ does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional

import pytest

bleak_exc = pytest.importorskip("bleak.exc", reason="bleak is the [ble] extra: pip install -e '.[test]'")

from wattchecker_client import ble  # noqa: E402
from wattchecker_client.clock import Clock, FakeClock  # noqa: E402
from wattchecker_client.meter import MeterReader, ReaderSettings, links_for  # noqa: E402
from wattchecker_client.protocol import btwattch2  # noqa: E402
from wattchecker_client.protocol.frames import FrameDecoder, Measurement, encode_frame  # noqa: E402
from wattchecker_client.simulator import SimOptions, SimulatedMeter, air_conditioner, switched_off  # noqa: E402
from wattchecker_client.transport import LinkError, LinkTimeout  # noqa: E402

from .bluez import bus_without_bluez  # noqa: E402
from .conftest import ROOT, cli  # noqa: E402

# protocol.md's vectors
REQUEST = bytes.fromhex("AA 00 01 08 B3")
# (listed there with a stray 32nd byte after the CRC; a frame is 31 bytes)
MEASUREMENT = bytes.fromhex(
    "AA 00 1B 08 00 00 00 80 64 00 00 00 00 00 10 00 00 00 00 20 19 00 00 1E 18 09 02 06 7E 01 30"
)
CLOCK_ACK = bytes.fromhex("AA 00 02 01 00 97")


def replay_vectors(payload: bytes) -> bytes:
    """The meter's answers, from protocol.md's vectors, until the simulator replaces them."""
    if payload[0] == btwattch2.CMD_GET_DATA:
        return MEASUREMENT
    if payload[0] == btwattch2.CMD_SET_CLOCK:
        return CLOCK_ACK
    return encode_frame(bytes((payload[0], 0x01)), big_endian=True)


class FakeCharacteristic:
    """Like bleak's BleakGATTCharacteristic: a uuid and its properties."""

    def __init__(self, uuid: str, properties) -> None:
        self.uuid = uuid
        self.properties = list(properties)


class FakeServices:
    """Like bleak's BleakGATTServiceCollection: get_characteristic by uuid, None when absent."""

    def __init__(self, characteristics) -> None:
        self._by_uuid = {c.uuid: c for c in characteristics}

    def get_characteristic(self, specifier):
        return self._by_uuid.get(str(specifier).lower())


class Radio:
    """One RS-BTWATTCH2 on the air, and the BlueZ behaviour a test asks for."""

    def __init__(self, respond: Callable[[bytes], bytes] = replay_vectors, tx_properties=("write", "write-without-response")):
        self.respond = respond
        self.tx_properties = tx_properties
        self.clients: List["FakeBleakClient"] = []
        self.connect_errors: List[BaseException] = []  # raised by the next connects, in order
        self.unresolved = 0  # the next connects succeed with no Nordic UART service
        self.notify_failures = 0  # the next start_notify calls fail
        self.mute_after: Optional[int] = None  # stop notifying after this many requests...
        self.mute_heals = True  # ...until re-subscribed (False: a re-subscribe does not help)
        self.drop_mid_frame: Optional[int] = None  # cut this request's answer after 20 bytes, disconnect
        self.notify_before_reply = False  # the answer's notifications come before write_gatt_char returns
        self.requests = 0
        self.writes: List[tuple] = []  # (bytes, response) as written
        self.chunks: List[int] = []  # sizes of the notifications sent
        self.subscribes = 0
        self.unsubscribes = 0

    def factory(self, address: str, disconnected_callback=None, timeout: float = 10.0, **kwargs) -> "FakeBleakClient":
        client = FakeBleakClient(self, address, disconnected_callback, timeout)
        self.clients.append(client)
        return client


class FakeBleakClient:
    """Behaves like bleak.BleakClient against the ``Radio``'s meter."""

    def __init__(self, radio: Radio, address: str, disconnected_callback, timeout: float) -> None:
        self.radio = radio
        self.address = address
        self.timeout = timeout
        self._disconnected_callback = disconnected_callback
        self._decoder = FrameDecoder(big_endian=True)
        self._callback = None
        self._services = None
        self.is_connected = False
        self.disconnects = 0
        self.muted = False  # BlueZ stopped delivering this connection's notifications

    @property
    def services(self):
        if self._services is None:
            raise bleak_exc.BleakError("Service Discovery has not been performed yet")
        return self._services

    async def connect(self, **kwargs) -> None:
        radio = self.radio
        await asyncio.sleep(0)
        if radio.connect_errors:
            raise radio.connect_errors.pop(0)
        self.is_connected = True
        if radio.unresolved:
            radio.unresolved -= 1
            self._services = FakeServices([])
            return
        self._services = FakeServices(
            [
                FakeCharacteristic(ble.NUS_TX, radio.tx_properties),
                FakeCharacteristic(ble.NUS_RX, ("notify",)),
            ]
        )

    async def disconnect(self) -> None:
        self.disconnects += 1
        self.is_connected = False
        self._callback = None

    async def start_notify(self, characteristic, callback, **kwargs) -> None:
        if not self.is_connected:
            raise bleak_exc.BleakError("Not connected")
        if self.radio.notify_failures:
            self.radio.notify_failures -= 1
            raise bleak_exc.BleakDBusError("org.bluez.Error.Failed", ["Operation failed with ATT error: 0x0e"])
        self.radio.subscribes += 1
        if self.radio.mute_heals:
            self.muted = False
        self._callback = callback
        self._rx = characteristic

    async def stop_notify(self, characteristic) -> None:
        self.radio.unsubscribes += 1
        self._callback = None

    async def write_gatt_char(self, characteristic, data, response: Optional[bool] = None) -> None:
        if not self.is_connected:
            raise bleak_exc.BleakError("Not connected")
        assert characteristic.uuid == ble.NUS_TX
        assert len(data) <= 20
        self.radio.writes.append((bytes(data), response))
        self._decoder.feed(bytes(data))
        for frame in self._decoder:
            self._answer(self.radio.respond(frame.payload))

    def _answer(self, response: bytes) -> None:
        radio = self.radio
        radio.requests += 1
        if radio.mute_after is not None and radio.requests == radio.mute_after + 1:
            self.muted = True
        cut = radio.drop_mid_frame is not None and radio.requests == radio.drop_mid_frame
        chunks = [response[at : at + 20] for at in range(0, len(response), 20)]
        loop = asyncio.get_running_loop()
        for chunk in chunks[:1] if cut else chunks:
            if radio.notify_before_reply:
                self._notify(chunk)  # as real BlueZ can: the signal overtakes the method's reply
            else:
                loop.call_soon(self._notify, chunk)
        if cut:
            loop.call_soon(self._drop)

    def _notify(self, chunk: bytes) -> None:
        if self._callback is not None and self.is_connected and not self.muted:
            self.radio.chunks.append(len(chunk))
            self._callback(self._rx, bytearray(chunk))

    def _drop(self) -> None:
        """The meter goes out of range: BlueZ reports the disconnection."""
        self.is_connected = False
        if self._disconnected_callback is not None:
            self._disconnected_callback(self)


@pytest.fixture
def opened():
    """Open BLE links on a Radio; everything is closed afterwards."""
    openers: List[ble.BleOpener] = []

    def open_on(radio: Radio, **kwargs) -> ble.BleOpener:
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("connect_timeout", 1.0)
        opener = ble.BleOpener("00:0c:bf:12:34:56", client_factory=radio.factory, **kwargs)
        openers.append(opener)
        return opener

    yield open_on
    for opener in openers:
        opener.close()


def exchange(link, request: bytes = REQUEST, timeout: float = 1.0) -> bytes:
    """Send ``request``; the payload of the first whole frame that comes back."""
    link.write(request)
    decoder = FrameDecoder(big_endian=True)
    while True:
        decoder.feed(link.read(timeout=timeout))
        frame = decoder.next_frame()
        if frame is not None:
            return frame.payload


# --- the byte stream -------------------------------------------------------------


def test_a_request_and_its_answer_split_at_20_bytes():
    radio = Radio()
    opener = ble.BleOpener("00:0c:bf:12:34:56", client_factory=radio.factory, timeout=1.0)
    try:
        with opener() as link:
            assert exchange(link) == MEASUREMENT[3:-1]
            assert exchange(link) == MEASUREMENT[3:-1]
    finally:
        opener.close()
    assert radio.chunks == [20, 11, 20, 11]
    assert radio.writes == [(REQUEST, True), (REQUEST, True)]
    assert btwattch2.decode_measurement(MEASUREMENT[3:-1]).watts == 25.125
    # Closing the link disconnected the client: BlueZ keeps no stale link.
    assert [c.disconnects for c in radio.clients] == [1]
    assert opener.stats.bytes_out == 10 and opener.stats.bytes_in == 62 and opener.stats.notifications == 4


@pytest.mark.parametrize(
    "properties, response",
    [
        (("write", "write-without-response"), True),
        (("write",), True),
        (("write-without-response",), False),
    ],
)
def test_write_type_follows_the_characteristic(opened, properties, response):
    radio = Radio(tx_properties=properties)
    with opened(radio)() as link:
        assert exchange(link) == MEASUREMENT[3:-1]
    assert radio.writes == [(REQUEST, response)]


def test_a_characteristic_that_cannot_be_written_is_a_half_open_link(opened):
    radio = Radio(tx_properties=("read", "notify"))
    opener = opened(radio)
    with pytest.raises(LinkError, match=r"connected 2 times, never usable: TX characteristic .* is not writable"):
        opener()
    assert [c.disconnects for c in radio.clients] == [1, 1]
    assert opener.stats.half_open == 2


# --- connects that half-succeed ----------------------------------------------------


@pytest.mark.parametrize("fault", ["unresolved", "notify_failures"], ids=["services-not-resolved", "start-notify-fails"])
def test_a_half_open_connect_is_dropped_and_tried_again(opened, fault):
    radio = Radio()
    setattr(radio, fault, 1)
    opener = opened(radio)
    with opener() as link:
        assert exchange(link) == MEASUREMENT[3:-1]
    # The stale link was dropped before the retry; the good one when the link closed.
    assert [c.disconnects for c in radio.clients] == [1, 1]
    assert opener.stats.half_open == 1 and opener.stats.connects == 1


def test_a_failed_connect_is_one_clear_link_error(opened):
    radio = Radio()
    radio.connect_errors = [bleak_exc.BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"])]
    opener = opened(radio)
    with pytest.raises(LinkError) as caught:
        opener()
    assert str(caught.value) == (
        "00:0C:BF:12:34:56 (BLE): the Bluetooth adapter is powered off: `bluetoothctl power on` "
        "(and check `rfkill list`)"
    )
    assert radio.clients[0].disconnects == 1
    with opener() as link:  # the next try (after the reader's backoff) works
        assert exchange(link) == MEASUREMENT[3:-1]


# --- notifications that stop, links that drop ---------------------------------------


def test_notifications_that_stop_are_re_subscribed(opened):
    radio = Radio()
    radio.mute_after = 1
    opener = opened(radio, silence_timeout=0.2)
    with opener() as link:
        assert exchange(link) == MEASUREMENT[3:-1]
        link.write(REQUEST)  # its answer is lost: BlueZ stopped delivering
        with pytest.raises(LinkTimeout):
            link.read(timeout=0.6)
        assert radio.unsubscribes == 1 and radio.subscribes == 2
        assert exchange(link) == MEASUREMENT[3:-1]  # the same link carries answers again
    assert len(radio.clients) == 1
    assert opener.stats.resubscribes == 1 and opener.stats.silent_closes == 0


# (poll_interval, polls): the default silence timeout is 3 s; 12 polls at 5 s are a minute.
INTERVALS = [(1, 6), (3, 4), (5, 12), (10, 3)]
SCALE = 0.05  # seconds of real time per second of the meter's: the same ratios, twenty times faster


@pytest.mark.parametrize("interval, polls", INTERVALS)
def test_answers_before_the_writes_reply_never_look_like_silence(opened, interval, polls):
    """Answers that overtake the write's reply: no re-subscribe, whatever the poll interval."""
    radio = Radio()
    radio.notify_before_reply = True
    opener = opened(radio, silence_timeout=ble.SILENCE_TIMEOUT * SCALE)
    clock = Clock()
    with opener() as link:
        for _ in range(polls):
            assert exchange(link) == MEASUREMENT[3:-1]
            clock.sleep(interval * SCALE)
        clock.sleep(2 * ble.SILENCE_TIMEOUT * SCALE)  # after the last answer, as long again as the timer
    assert (radio.unsubscribes, radio.subscribes) == (0, 1)
    assert opener.stats.resubscribes == 0 and len(radio.clients) == 1


def test_notifications_that_stay_stopped_close_the_link(opened):
    radio = Radio()
    radio.mute_after = 1
    radio.mute_heals = False
    opener = opened(radio, silence_timeout=0.2)
    link = opener()
    assert exchange(link) == MEASUREMENT[3:-1]
    with pytest.raises(LinkError) as caught:
        for _ in range(10):  # as the reader does: ask again after each timeout
            link.write(REQUEST)
            try:
                link.read(timeout=0.5)
            except LinkTimeout:
                continue
    assert not isinstance(caught.value, LinkTimeout)
    assert str(caught.value) == (
        "00:0C:BF:12:34:56 (BLE): no notification for 0.2 s, even after re-subscribing"
    )
    link.close()
    assert radio.clients[0].disconnects == 1
    assert opener.stats.resubscribes == 1 and opener.stats.silent_closes == 1


def test_a_disconnect_mid_frame_ends_the_stream_with_why(opened):
    radio = Radio()
    radio.drop_mid_frame = 2
    opener = opened(radio)
    link = opener()
    assert exchange(link) == MEASUREMENT[3:-1]
    link.write(REQUEST)
    received = b""
    with pytest.raises(LinkError, match=r"\(BLE\): the meter or BlueZ dropped the BLE connection$"):
        while True:
            received += link.read(timeout=2.0)
    assert received == MEASUREMENT[:20]
    link.close()
    assert opener.stats.drops == 1
    with opener() as again:
        assert exchange(again) == MEASUREMENT[3:-1]


def test_one_silent_meter_does_not_hold_up_another(opened):
    quiet, talking = Radio(), Radio()
    quiet.mute_after = 0
    quiet.mute_heals = False
    with opened(quiet, silence_timeout=5.0)() as silent_link, opened(talking)() as link:
        silent_link.write(REQUEST)
        for _ in range(5):
            assert exchange(link, timeout=0.5) == MEASUREMENT[3:-1]
    assert quiet.chunks == [] and talking.chunks == [20, 11] * 5


# --- errors a user can act on ----------------------------------------------------------


@pytest.mark.parametrize(
    "error, line",
    [
        (FileNotFoundError(2, "No such file or directory"),
         "cannot reach BlueZ: no D-Bus system bus at unix:path=/run/dbus/system_bus_socket "
         "(No such file or directory): start D-Bus and Bluetooth (`sudo systemctl start dbus bluetooth`)"),
        (bleak_exc.BleakDBusError("org.freedesktop.DBus.Error.ServiceUnknown",
                                  ["The name org.bluez was not provided by any .service files"]),
         "bluetoothd is not running (no org.bluez on the D-Bus system bus): `sudo systemctl start bluetooth`"),
        (bleak_exc.BleakError("No powered Bluetooth adapters found. Turn on Bluetooth and try again."),
         "the Bluetooth adapter is powered off: `bluetoothctl power on` (and check `rfkill list`)"),
        (bleak_exc.BleakError("No Bluetooth adapters found."),
         "no Bluetooth LE adapter found (No Bluetooth adapters found.): check `bluetoothctl list` and `rfkill list`"),
        (bleak_exc.BleakDeviceNotFoundError("00:0C:BF:12:34:56", "Device with address 00:0C:BF:12:34:56 was not found."),
         "not found by a scan: is it plugged in, in range, and not connected to another host (a phone app)? "
         "`wattchecker-client scan` lists the meters nearby"),
        (asyncio.TimeoutError(), "timed out (is the meter plugged in, in range, and not connected to a phone?)"),
        (bleak_exc.BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-remote"]),
         "BlueZ failed: le-connection-abort-by-remote (is the meter plugged in, in range, and not connected to a phone?)"),
        (bleak_exc.BleakError("adapter 'hci3' not found"),
         "adapter 'hci3' not found: check `adapter:` (or --adapter) against `bluetoothctl list`"),
        (bleak_exc.BleakDBusError("org.freedesktop.DBus.Error.AccessDenied", [
            'Rejected send message, 2 matched rules; type="method_call", sender=":1.2" (uid=999 pid=1) '
            'interface="org.bluez.Adapter1" member="StartDiscovery" error name="(unset)" destination="org.bluez"']),
         "D-Bus denied this process a call to BlueZ (org.bluez.Adapter1.StartDiscovery): run the service as root "
         "or as a member of group `bluetooth` (`sudo usermod -aG bluetooth USER`, then restart it)"),
        (bleak_exc.BleakDBusError("org.bluez.Error.NotConnected", ["Not Connected"]),
         "the meter or BlueZ dropped the BLE connection"),
    ],
    ids=["no-dbus", "no-bluetoothd", "powered-off", "no-adapter", "not-found", "timeout", "bluez-failed",
         "no-such-adapter", "denied", "not-connected"],
)
def test_what_bluez_raises_becomes_one_line(monkeypatch, error, line):
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS", raising=False)
    assert ble.explain(error) == line


@pytest.mark.process
def test_without_bleak_the_line_names_the_extra():
    code = (
        "import sys, collections; sys.modules['bleak'] = None\n"
        "from wattchecker_client import ble\n"
        "Meter = collections.namedtuple('Meter', 'address model')\n"
        "print(ble.check_setup([Meter('00:0C:BF:12:34:56', 'btwattch1'), Meter('tcp://127.0.0.1:1', 'btwattch2')]))\n"
        "for attempt in (lambda: ble.check_setup([Meter('f0:12:34:56:78:9a', 'btwattch2')]),\n"
        "                ble.BleOpener('F0:12:34:56:78:9A')):\n"
        "    try:\n        attempt()\n"
        "    except Exception as exc:\n        print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    line = (
        "SetupError a Bluetooth LE meter (model btwattch2 at a MAC address) needs bleak: "
        "pip install 'wattchecker-client[ble]'\n"
    )
    assert out.stdout == "[]\n" + line + line


# --- the real reader and session above the link, the simulated meter below it ---------------

ADDRESS = "F0:12:34:56:78:9A"


def simulated_radio(clock, **options) -> tuple:
    """A Radio carrying the simulated RS-BTWATTCH2's byte stream, and the meter itself."""
    meter = SimulatedMeter(SimOptions(model="btwattch2", **options), clock)
    return Radio(respond=meter.respond), meter


def ble_reader(radio: Radio, clock, **kwargs) -> MeterReader:
    settings = ReaderSettings(ADDRESS, model="btwattch2", timeout=0.5, response_timeout=0.5, backoff=(0.01, 0.02),
                              **kwargs)
    return MeterReader(settings, clock, threading.Event(), links=links_for(settings, ble_client_factory=radio.factory))


def take(reader: MeterReader, count: int) -> List[Measurement]:
    readings = reader.readings()
    try:
        return [next(readings) for _ in range(count)]
    finally:
        readings.close()


def assert_measured(readings: List[Measurement], seed: int = 1) -> None:
    """Every row is what the simulated meter measured at that second, each second once, in order."""
    assert readings == [air_conditioner(m.time, seed, "btwattch2") for m in readings]
    assert all(b.time > a.time for a, b in zip(readings, readings[1:]))


def test_reader_reads_the_simulated_meter_over_ble():
    clock = FakeClock(dt.datetime(2026, 7, 2, 9, 24, 30))
    radio, _ = simulated_radio(clock)
    reader = ble_reader(radio, clock)
    readings = take(reader, 5)
    assert_measured(readings)
    assert [m.time for m in readings] == [dt.datetime(2026, 7, 2, 9, 24, 30 + i) for i in range(5)]  # polled at .5
    assert radio.chunks == [6] + [20, 11] * 5  # the clock's ack, then each 31-byte answer in two notifications
    assert reader.stats.connects == 1 and reader.stats.crc_errors == 0 and reader.stats.junk_bytes == 0
    # Closing the reader disconnected its one BLE client.
    assert [c.disconnects for c in radio.clients] == [1]


def test_reader_reconnects_after_a_disconnect_mid_frame_and_keeps_no_poison_row():
    clock = FakeClock(dt.datetime(2026, 7, 2, 9, 24, 30))
    radio, _ = simulated_radio(clock)
    radio.drop_mid_frame = 4  # set clock, then polls: the third poll's answer is cut after 20 bytes
    reader = ble_reader(radio, clock)
    readings = take(reader, 6)
    assert_measured(readings)
    assert len(radio.clients) == 2 and reader.stats.connects == 2 and reader.stats.link_errors == 1
    assert reader.stats.rejected == 0 and reader.stats.crc_errors == 0


def test_reader_rides_out_notifications_that_stop_by_re_subscribing():
    clock = FakeClock(dt.datetime(2026, 7, 2, 9, 24, 30))
    radio, _ = simulated_radio(clock)
    radio.mute_after = 3
    reader = ble_reader(radio, clock)
    readings = take(reader, 5)
    assert_measured(readings)
    assert (radio.subscribes, radio.unsubscribes) == (2, 1)
    assert len(radio.clients) == 1 and reader.stats.connects == 1  # the same connection, healed


def test_reader_reconnects_when_re_subscribing_does_not_help():
    clock = FakeClock(dt.datetime(2026, 7, 2, 9, 24, 30))
    radio, _ = simulated_radio(clock)
    radio.mute_after = 3
    radio.mute_heals = False
    reader = ble_reader(radio, clock)
    readings = take(reader, 5)
    assert_measured(readings)
    assert radio.unsubscribes == 1 and len(radio.clients) == 2 and reader.stats.connects == 2
    assert radio.clients[0].disconnects == 1  # the silent link was dropped, not left to BlueZ


def test_the_links_counters_reach_metrics_under_the_meters_labels(tmp_path):
    """Half-open connects, re-subscriptions and silent closes are what a user needs to see a flaky radio."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from wattchecker_client.live import LiveState
    from wattchecker_client.metrics import LiveCollector, registry_for
    from wattchecker_client.writer import Writer

    clock = FakeClock(dt.datetime(2026, 7, 2, 9, 24, 30))
    radio, _ = simulated_radio(clock)
    radio.mute_after = 3
    radio.mute_heals = False
    reader = ble_reader(radio, clock)
    assert_measured(take(reader, 5))
    stems = {"plug": "wattchecker-data"}
    collector = LiveCollector(LiveState(clock, tmp_path, stems), lambda: {"plug": reader.stats},
                              Writer(tmp_path, stems, ["csv"], clock), None, clock, {"plug": "0123456789ab"},
                              lambda: {"plug": reader.link_stats})
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry_for(collector)).decode())}

    def count(name):
        (found,) = [s for s in families[name].samples if s.name.endswith("_total")]
        assert found.labels == {"meter": "plug", "meter_id": "0123456789ab"}
        return found.value

    assert (count("wattchecker_ble_connects"), count("wattchecker_ble_resubscribes"),
            count("wattchecker_ble_silent_closes"), count("wattchecker_ble_half_open_connects")) == (2, 1, 1, 0)
    assert count("wattchecker_ble_notifications") == reader.link_stats.notifications > 0


def test_relay_switched_over_ble_and_the_rows_show_it():
    clock = FakeClock(dt.datetime(2026, 7, 2, 9, 24, 30))
    radio, meter = simulated_radio(clock)
    reader = ble_reader(radio, clock)
    readings = reader.readings()
    try:
        on = [next(readings) for _ in range(2)]
        switched = reader.request_relay(False)
        off = [next(readings) for _ in range(2)]
        assert switched.result(timeout=0) is False
    finally:
        readings.close()
    assert_measured(on)
    assert off == [switched_off(air_conditioner(m.time, 1, "btwattch2")) for m in off]  # the line's V, 0 mA, 0 W
    assert [m.watts for m in off] == [0.0, 0.0]
    assert not meter.relay and reader.relay is False
    assert bytes.fromhex("AA 00 02 A7 00 DC") in b"".join(data for data, _ in radio.writes)


def test_reader_backs_off_through_a_failed_connect_with_one_line(caplog):
    clock = FakeClock(dt.datetime(2026, 7, 2, 9, 24, 30))
    radio, _ = simulated_radio(clock)
    radio.connect_errors = [
        bleak_exc.BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"]),
        bleak_exc.BleakError("No powered Bluetooth adapters found. Turn on Bluetooth and try again."),
    ]
    reader = ble_reader(radio, clock)
    with caplog.at_level(logging.INFO, logger="wattchecker_client"):
        readings = take(reader, 3)
    assert_measured(readings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"{ADDRESS} (BLE): the Bluetooth adapter is powered off: `bluetoothctl power on` "
        "(and check `rfkill list`); reconnecting"
    ]
    assert reader.stats.link_errors == 2 and reader.stats.connects == 1
    assert [c.disconnects for c in radio.clients] == [1, 1, 1]  # each failed client was let go too


# --- the real bleak on a machine without BlueZ ---------------------------------------------


def read_until_warned(env: dict) -> List[str]:
    """`read MAC --model btwattch2` as a real process; its stderr lines once it has warned, then SIGINT."""
    proc = subprocess.Popen(cli("read", ADDRESS, "--model", "btwattch2", "--count", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **env})
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("WARNING"):
                break
        time.sleep(3)  # a few reconnect attempts, to see that they stay quiet
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (0, "")
    return lines + rest.splitlines()


@pytest.mark.process
def test_real_read_without_a_system_bus_says_what_to_start(tmp_path):
    lines = read_until_warned({"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"})
    assert lines[0] == (
        f"WARNING wattchecker_client.meter: {ADDRESS} (BLE): cannot reach BlueZ: no D-Bus system bus at "
        f"unix:path={tmp_path}/no-bus (No such file or directory): start D-Bus and Bluetooth "
        "(`sudo systemctl start dbus bluetooth`); reconnecting"
    )
    assert len(lines) == 2 and lines[1].startswith("INFO wattchecker_client: 0 readings printed; ")


@pytest.mark.process
def test_real_read_without_bluetoothd_says_what_to_start(tmp_path):
    with bus_without_bluez(tmp_path) as address:
        lines = read_until_warned({"DBUS_SYSTEM_BUS_ADDRESS": address})
    assert lines[0] == (
        f"WARNING wattchecker_client.meter: {ADDRESS} (BLE): bluetoothd is not running "
        "(no org.bluez on the D-Bus system bus): `sudo systemctl start bluetooth`; reconnecting"
    )
    assert len(lines) == 2 and lines[1].startswith("INFO wattchecker_client: 0 readings printed; ")
