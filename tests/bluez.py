"""A real dbus-daemon standing in for the system bus, with or without a stand-in BlueZ on it.

``bus_without_bluez``: what bleak meets on a machine where bluetoothd is not running.

``StandInBlueZ``: a small ``org.bluez`` service, served with dbus-fast (the D-Bus
library bleak itself uses) on that private bus, so the *real* bleak BlueZ backend
and ``wattchecker_client.ble`` run end to end in a process whose
``DBUS_SYSTEM_BUS_ADDRESS`` points at it. It holds what bleak reads:

- ``/org/bluez/hci0``, ``Adapter1``: ``Powered``, ``Roles``, ``Start/StopDiscovery``,
  ``SetDiscoveryFilter``, ``RemoveDevice``. While discovering, the device
  "advertises": a ``PropertiesChanged`` of ``RSSI`` and ``ManufacturerData``
  (company 0x0B60, the simulated meter's state) every ``ADVERTISE_EVERY`` s.
- one RS-BTWATTCH2, ``Device1``: ``Connect``/``Disconnect``, ``Connected``,
  ``ServicesResolved``, ``Paired``, ``RSSI``, ``ManufacturerData``.
- once connected, the Nordic UART service (``GattService1``) with its RX
  characteristic (notify) and TX characteristic (write), exported then, as BlueZ
  does, and removed at disconnect.
- behind it, ``SimulatedMeter`` with ``model="btwattch2"``: each request written
  to TX is answered as ``PropertiesChanged`` of RX's ``Value``, 20 bytes at a time.

Every measurement it answers with is kept in ``ledger`` (what a test compares the
hourly files with), with ``up`` saying whether the client was subscribed then.

Fault switches, callable from the test's thread (each applies on the service's loop):
``mute()`` (notifications stop while connected; ``heals_on_resubscribe`` says whether
StopNotify/StartNotify brings them back), ``vanish()``/``reappear()`` (the device's
objects go: ``InterfacesRemoved``), ``half_open(n)`` (the next n connects never
resolve services), ``fail_subscribes(n)`` (the next n ``StartNotify`` fail),
``power(False)`` (the adapter powers off, dropping the link), ``fail_connects(n)``
(the next n ``Connect`` calls fail with ``org.bluez.Error.Failed``).

It needs the ``dbus-daemon`` binary (Debian package ``dbus-daemon``); without it the
tests that use it skip with one line.
"""

import asyncio
import contextlib
import datetime as dt
import functools
import select
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from wattchecker_client.protocol import btwattch2
from wattchecker_client.protocol.frames import FrameDecoder


BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_type="signal"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""

SKIP_REASON = "dbus-daemon is not installed (Debian package dbus-daemon)"


@contextlib.contextmanager
def bus_without_bluez(folder: Path) -> Iterator[str]:
    """Start the daemon on a socket in ``folder``; its address, for DBUS_SYSTEM_BUS_ADDRESS."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.skip(SKIP_REASON)
    socket_path = folder / "system_bus_socket"
    config = folder / "bus.conf"
    config.write_text(BUS_CONFIG.format(path=socket_path))
    # --print-address answers once the socket listens; the socket file alone appears at bind(),
    # a moment before, and a connect then is refused.
    proc = subprocess.Popen([daemon, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # a failure bound: it starts in milliseconds
        assert ready and proc.stdout.readline(), "dbus-daemon did not start within 60 s"
        yield f"unix:path={socket_path}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()


# --- the stand-in BlueZ ------------------------------------------------------------------

ADAPTER_PATH = "/org/bluez/hci0"
NUS_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_TX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"  # host -> meter (write)
NUS_RX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"  # meter -> host (notify)
NOTIFY_CHUNK = 20  # the default ATT payload: a 31-byte answer is two notifications
ADVERTISE_EVERY = 0.2
RSSI = -60
MANUFACTURER_ID = 0x0B60  # RATOC's company id, from docs/protocol.md (not from the code under test)
FAILED = "org.bluez.Error.Failed"
NOT_READY = "org.bluez.Error.NotReady"


def device_path(mac: str) -> str:
    return f"{ADAPTER_PATH}/dev_{mac.upper().replace(':', '_')}"


@functools.lru_cache(maxsize=None)
def _interfaces():
    """dbus-fast's service classes, built at first use so that importing this module needs no dbus-fast."""
    from dbus_fast import DBusError, PropertyAccess, Variant
    from dbus_fast.service import ServiceInterface, dbus_property, method

    def readable(name: str, signature: str, value: Callable[[Any], Any]) -> Any:
        """A read-only D-Bus property ``name`` of type ``signature``, worth ``value(interface)``."""

        def getter(self: Any) -> Any:
            return value(self)

        getter.__name__ = name
        getter.__annotations__ = {"return": signature}
        return dbus_property(access=PropertyAccess.READ, name=name)(getter)

    class Adapter(ServiceInterface):
        """org.bluez.Adapter1 of hci0."""

        Address = readable("Address", "s", lambda a: "00:1A:7D:DA:71:13")
        Name = readable("Name", "s", lambda a: "stand-in")
        Powered = readable("Powered", "b", lambda a: a.bluez.powered)
        Discovering = readable("Discovering", "b", lambda a: a.bluez.discovering)
        Roles = readable("Roles", "as", lambda a: ["central", "peripheral"])

        def __init__(self, bluez: "StandInBlueZ") -> None:
            super().__init__("org.bluez.Adapter1")
            self.bluez = bluez

        @method()
        def SetDiscoveryFilter(self, properties: "a{sv}"):  # noqa: F821, N802 (D-Bus names and signatures)
            self.bluez.calls.append("SetDiscoveryFilter")

        @method()
        def StartDiscovery(self):  # noqa: N802
            self.bluez.calls.append("StartDiscovery")
            if not self.bluez.powered:
                raise DBusError(NOT_READY, "Resource Not Ready")
            self.bluez.set_discovering(True)

        @method()
        def StopDiscovery(self):  # noqa: N802
            self.bluez.calls.append("StopDiscovery")
            self.bluez.set_discovering(False)

        @method()
        def RemoveDevice(self, device: "o"):  # noqa: F821, N802
            self.bluez.calls.append("RemoveDevice")
            self.bluez.vanish()

    class Device(ServiceInterface):
        """org.bluez.Device1 of the RS-BTWATTCH2: paired and trusted, as the README's setup leaves it."""

        Address = readable("Address", "s", lambda d: d.bluez.mac)
        AddressType = readable("AddressType", "s", lambda d: "public")
        Name = readable("Name", "s", lambda d: d.bluez.name)
        Alias = readable("Alias", "s", lambda d: d.bluez.name)
        Adapter = readable("Adapter", "o", lambda d: ADAPTER_PATH)
        Paired = readable("Paired", "b", lambda d: True)
        Bonded = readable("Bonded", "b", lambda d: True)
        Trusted = readable("Trusted", "b", lambda d: True)
        Connected = readable("Connected", "b", lambda d: d.bluez.connected)
        ServicesResolved = readable("ServicesResolved", "b", lambda d: d.bluez.resolved)
        RSSI = readable("RSSI", "n", lambda d: RSSI)
        UUIDs = readable("UUIDs", "as", lambda d: [NUS_SERVICE])
        ManufacturerData = readable(
            "ManufacturerData", "a{qv}",
            lambda d: {MANUFACTURER_ID: Variant("ay", d.bluez.meter.advertisement())},
        )

        def __init__(self, bluez: "StandInBlueZ") -> None:
            super().__init__("org.bluez.Device1")
            self.bluez = bluez

        @method()
        async def Connect(self):  # noqa: N802
            await self.bluez.connect()

        @method()
        def Disconnect(self):  # noqa: N802
            self.bluez.calls.append("Disconnect")
            self.bluez.drop()

    class Service(ServiceInterface):
        """org.bluez.GattService1: the Nordic UART service."""

        UUID = readable("UUID", "s", lambda s: NUS_SERVICE)
        Device = readable("Device", "o", lambda s: s.device)
        Primary = readable("Primary", "b", lambda s: True)

        def __init__(self, device: str) -> None:
            super().__init__("org.bluez.GattService1")
            self.device = device

    class Characteristic(ServiceInterface):
        """org.bluez.GattCharacteristic1: RX (notify) or TX (write)."""

        UUID = readable("UUID", "s", lambda c: c.uuid)
        Service = readable("Service", "o", lambda c: c.service)
        Value = readable("Value", "ay", lambda c: c.value)
        Notifying = readable("Notifying", "b", lambda c: c.notifying)
        Flags = readable("Flags", "as", lambda c: c.flags)
        MTU = readable("MTU", "q", lambda c: NOTIFY_CHUNK + 3)

        def __init__(self, bluez: "StandInBlueZ", uuid: str, service: str, flags: List[str]) -> None:
            super().__init__("org.bluez.GattCharacteristic1")
            self.bluez, self.uuid, self.service, self.flags = bluez, uuid, service, flags
            self.value = b""
            self.notifying = False

        @method()
        def StartNotify(self):  # noqa: N802
            self.bluez.calls.append("StartNotify")
            self.bluez.subscribe(self, True)

        @method()
        def StopNotify(self):  # noqa: N802
            self.bluez.calls.append("StopNotify")
            self.bluez.subscribe(self, False)

        @method()
        def ReadValue(self, options: "a{sv}") -> "ay":  # noqa: F821, N802
            return self.value

        @method()
        def WriteValue(self, value: "ay", options: "a{sv}"):  # noqa: F821, N802
            if "write" not in self.flags and "write-without-response" not in self.flags:
                raise DBusError("org.bluez.Error.NotPermitted", "Write not permitted")
            self.bluez.written(bytes(value))

        def notify(self, data: bytes) -> None:
            self.value = data
            self.emit_properties_changed({"Value": data})

    return Adapter, Device, Service, Characteristic


class StandInBlueZ:
    """``org.bluez`` with one RS-BTWATTCH2, on its own event loop thread; see the module's docstring."""

    def __init__(self, address: str, mac: str, meter: Any) -> None:
        self.address = address
        self.mac = mac.upper()
        self.name = "BTWATTCH2_" + self.mac.replace(":", "")[-4:]
        self.meter = meter
        self.path = device_path(self.mac)
        self.powered = True
        self.discovering = False
        self.connected = False
        self.resolved = False
        self.present = True
        self.muted = False
        self.heals_on_resubscribe = True
        self.half_opens = 0
        self.connect_failures = 0
        self.notify_failures = 0
        # (meter second, measurement, the client subscribed) per measurement answered
        self.ledger: List[Tuple[dt.datetime, Any, bool]] = []
        self.writes: List[bytes] = []
        self.advertised: List[bytes] = []  # manufacturer data sent while discovering
        self.calls: List[str] = []
        self.connects = 0
        self._decoder: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stand-in bluez", daemon=True)
        self._bus: Any = None
        self._gatt: List[Tuple[str, Any]] = []
        self._rx: Any = None
        self._advertiser: Optional[asyncio.TimerHandle] = None

    # --- life --------------------------------------------------------------------------

    def start(self) -> "StandInBlueZ":
        self._thread.start()
        self.call(self._start)
        return self

    async def _start(self) -> None:
        from dbus_fast.aio import MessageBus

        adapter_cls, device_cls, _, _ = _interfaces()
        self._bus = await MessageBus(bus_address=self.address).connect()
        self._adapter = adapter_cls(self)
        self._device = device_cls(self)
        self._bus.export(ADAPTER_PATH, self._adapter)
        self._bus.export(self.path, self._device)
        await self._bus.request_name("org.bluez")

    def close(self) -> None:
        """Leave the bus, then stop the loop's thread."""

        async def stop() -> None:
            self._bus.disconnect()

        with contextlib.suppress(Exception):
            self.call(stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function`` (plain or async) on the service's loop, from the test's thread."""

        async def run() -> Any:
            result = function(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # --- what the client does ------------------------------------------------------------

    async def connect(self) -> None:
        from dbus_fast import DBusError

        self.calls.append("Connect")
        if not self.powered:
            raise DBusError(NOT_READY, "Resource Not Ready")
        if not self.present:
            raise DBusError("org.freedesktop.DBus.Error.UnknownObject", "no such device")
        if self.connect_failures:
            self.connect_failures -= 1
            raise DBusError(FAILED, "le-connection-abort-by-remote")
        if self.connected:
            return
        self.connects += 1
        self.connected = True
        self._device.emit_properties_changed({"Connected": True})
        if self.half_opens:
            self.half_opens -= 1  # connected, services never resolved: a half-open link
            return
        self._export_gatt()
        self.resolved = True
        self._device.emit_properties_changed({"ServicesResolved": True})

    def _export_gatt(self) -> None:
        _, _, service_cls, char_cls = _interfaces()
        service = f"{self.path}/service000c"
        self._rx = char_cls(self, NUS_RX, service, ["notify"])
        tx = char_cls(self, NUS_TX, service, ["write-without-response", "write"])
        self._gatt = [(service, service_cls(self.path)), (f"{service}/char000d", tx),
                      (f"{service}/char000f", self._rx)]
        for path, interface in self._gatt:
            self._bus.export(path, interface)
        self._decoder = FrameDecoder(big_endian=True)

    def drop(self) -> None:
        """The link goes down (asked for, or a fault): services go, then Connected turns false."""
        if self.resolved:
            self.resolved = False
            self._device.emit_properties_changed({"ServicesResolved": False})
        for path, interface in reversed(self._gatt):
            self._bus.unexport(path, interface)
        self._gatt, self._rx = [], None
        self.muted = False  # a link's silence ends with the link
        if self.connected:
            self.connected = False
            self._device.emit_properties_changed({"Connected": False})

    def subscribe(self, characteristic: Any, on: bool) -> None:
        from dbus_fast import DBusError

        if characteristic is not self._rx:
            raise DBusError("org.bluez.Error.NotSupported", "Operation is not supported")
        if on and self.notify_failures:
            self.notify_failures -= 1
            raise DBusError(FAILED, "Operation failed with ATT error: 0x0e")
        characteristic.notifying = on
        characteristic.emit_properties_changed({"Notifying": on})
        if on and self.heals_on_resubscribe:
            self.muted = False

    def written(self, data: bytes) -> None:
        """A write to TX: frame it as the meter would, answer each request in 20-byte notifications."""
        self.writes.append(data)
        self._decoder.feed(data)
        for frame in self._decoder:
            answer = self.meter.respond(frame.payload)
            up = self._rx is not None and self._rx.notifying and not self.muted
            self._record(frame.payload, answer, up)
            if up:
                for at in range(0, len(answer), NOTIFY_CHUNK):
                    self._rx.notify(answer[at : at + NOTIFY_CHUNK])

    def _record(self, request: bytes, answer: bytes, up: bool) -> None:
        """Into the ledger: the measurement in ``answer``, as the meter's clock stamped it."""
        if request[0] != btwattch2.CMD_GET_DATA:
            return
        decoder = FrameDecoder(big_endian=True)
        decoder.feed(answer)
        for frame in decoder:
            if frame.payload[0] == btwattch2.CMD_GET_DATA and frame.payload[1] == 0:
                m = btwattch2.decode_measurement(frame.payload)
                self.ledger.append((m.time, m, up))

    # --- scanning ---------------------------------------------------------------------

    def set_discovering(self, on: bool) -> None:
        self.discovering = on
        self._adapter.emit_properties_changed({"Discovering": on})
        if self._advertiser is not None:
            self._advertiser.cancel()
            self._advertiser = None
        if on:
            self._advertise()

    def _advertise(self) -> None:
        """One advertisement seen: what BlueZ signals for a device in range while discovering."""
        from dbus_fast import Variant

        if self.present and not self.connected:
            data = self.meter.advertisement()
            self.advertised.append(data)
            self._device.emit_properties_changed(
                {"RSSI": RSSI, "ManufacturerData": {MANUFACTURER_ID: Variant("ay", data)}}
            )
        self._advertiser = self._loop.call_later(ADVERTISE_EVERY, self._advertise)

    # --- fault switches (from the test's thread) ---------------------------------------

    def mute(self, heals_on_resubscribe: bool = True) -> None:
        """Notifications stop while the link stays up."""

        def apply() -> None:
            self.muted, self.heals_on_resubscribe = True, heals_on_resubscribe

        self.call(apply)

    def vanish(self) -> None:
        """The device goes out of range: its link drops and its objects go (InterfacesRemoved)."""

        def apply() -> None:
            if not self.present:
                return
            self.drop()
            self.present = False
            self._bus.unexport(self.path, self._device)

        if threading.current_thread() is self._thread:
            apply()
        else:
            self.call(apply)

    def reappear(self) -> None:
        """The device is in range again: its objects come back (InterfacesAdded), ready to connect."""

        def apply() -> None:
            if not self.present:
                self.present = True
                self._bus.export(self.path, self._device)

        self.call(apply)

    def half_open(self, count: int = 1) -> None:
        """The next ``count`` connects succeed without ever resolving services."""
        self.call(setattr, self, "half_opens", count)

    def fail_connects(self, count: int = 1) -> None:
        """The next ``count`` Connect calls fail with org.bluez.Error.Failed."""
        self.call(setattr, self, "connect_failures", count)

    def fail_subscribes(self, count: int = 1) -> None:
        """The next ``count`` StartNotify calls fail: connected and resolved, but no notifications."""
        self.call(setattr, self, "notify_failures", count)

    def power(self, on: bool) -> None:
        """The adapter powers off (dropping the link) or back on."""

        def apply() -> None:
            if not on:
                self.drop()
            self.powered = on
            self._adapter.emit_properties_changed({"Powered": on})

        self.call(apply)

    def served(self) -> List[Tuple[dt.datetime, Any, bool]]:
        """A copy of the ledger, taken on the service's loop."""
        return self.call(lambda: list(self.ledger))


@contextlib.contextmanager
def stand_in_bluez(folder: Path, mac: str, meter: Any) -> Iterator[StandInBlueZ]:
    """A private system bus with the stand-in BlueZ on it; ``.address`` for DBUS_SYSTEM_BUS_ADDRESS."""
    pytest.importorskip("dbus_fast", reason="dbus-fast comes with bleak, the [ble] extra")
    with bus_without_bluez(folder) as address:
        bluez = StandInBlueZ(address, mac, meter).start()
        try:
            yield bluez
        finally:
            bluez.close()
