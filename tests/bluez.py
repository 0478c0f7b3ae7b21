"""A real dbus-daemon standing in for the system bus, with or without a stand-in BlueZ on it.

``bus_without_bluez``: what bleak meets on a machine where bluetoothd is not running.

``StandInBlueZ``: a small ``org.bluez`` service, served with dbus-fast (the D-Bus
library bleak itself uses) on that private bus, so the *real* bleak BlueZ backend
and ``wattchecker_client.ble`` run end to end in a process whose
``DBUS_SYSTEM_BUS_ADDRESS`` points at it. It holds what bleak reads:

- ``/org/bluez/hci0`` (and more adapters if asked), ``Adapter1``: ``Powered``, ``Roles``, ``Start/StopDiscovery``,
  ``SetDiscoveryFilter``, ``RemoveDevice``. While discovering, the device
  "advertises": a ``PropertiesChanged`` of ``RSSI`` and ``ManufacturerData``
  (company 0x0B60, the simulated meter's state) every ``ADVERTISE_EVERY`` s.
- one RS-BTWATTCH2, ``Device1``: ``Connect``/``Disconnect``, ``Connected``,
  ``ServicesResolved``, ``Paired``, ``RSSI``, ``ManufacturerData``.
- once connected, the Nordic UART service (``GattService1``) with its RX
  characteristic (notify) and TX characteristic (write), exported then, as BlueZ
  does, and removed at disconnect (kept, for a bonded device).
- behind it, ``SimulatedMeter`` with ``model="btwattch2"``: each request written
  to TX is answered as ``PropertiesChanged`` of RX's ``Value``, MTU - 3 bytes at a
  time (20 by default), the answers to one write joined.

``PiBehaviour`` turns on what a Raspberry Pi's BlueZ does besides, one option each:
``mtu=PI_MTU`` (247: a whole answer, or two, in one notification),
``notify_before_reply`` (the write's reply held ``REPLY_HOLD`` s after the answer's
notifications, so they reach bleak first), ``bonded`` (the GATT objects stay across a
disconnect), ``paired=False`` (a temporary device: on the bus only once discovered,
removed ``TEMPORARY_TIMEOUT`` s after it is neither connected nor seen), ``adapters``
and ``device_adapter`` (a second adapter, ``hci1``, the only one in range). The write
type of each write is kept in ``write_types``.

Every measurement it answers with is kept in ``ledger`` (what a test compares the
hourly files with), with ``up`` saying whether the client was subscribed then.

Fault switches, callable from the test's thread (each applies on the service's loop):
``mute()`` (notifications stop while connected; ``heals_on_resubscribe`` says whether
StopNotify/StartNotify brings them back), ``vanish()``/``reappear()`` (the device's
objects go: ``InterfacesRemoved``), ``half_open(n)`` (the next n connects never
resolve services), ``fail_subscribes(n)`` (the next n ``StartNotify`` fail),
``power(False)`` (the adapter powers off, dropping the link), ``fail_connects(n)``
(the next n ``Connect`` calls fail with ``org.bluez.Error.Failed``), ``deny_connect(on)``
(the bus's own policy refuses ``Device1.Connect``, AccessDenied, as for a service user
outside group ``bluetooth``; a SIGHUP makes dbus-daemon reload it), ``leave()`` /
``come_back()`` (a bluetoothd restart: ``org.bluez`` leaves the bus without a word,
and comes back with the GATT objects at new paths).

It needs the ``dbus-daemon`` binary (Debian package ``dbus-daemon``); without it the
tests that use it skip with one line.
"""

import asyncio
import contextlib
import datetime as dt
import functools
import select
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
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
    <allow receive_type="signal"/>{extra}
  </policy>
</busconfig>
"""
# What a service user outside Debian's BlueZ policy meets (/usr/share/dbus-1/system.d/bluetooth.conf
# lets root and group `bluetooth` call org.bluez): the bus itself refuses Connect with AccessDenied.
DENY_CONNECT = """
    <deny send_destination="org.bluez" send_interface="org.bluez.Device1" send_member="Connect"/>"""

SKIP_REASON = "dbus-daemon is not installed (Debian package dbus-daemon)"


class PrivateBus:
    """A dbus-daemon of our own; ``deny_connect`` changes its policy (a SIGHUP reloads it, as on a Pi)."""

    def __init__(self, folder: Path) -> None:
        self.socket_path = folder / "system_bus_socket"
        self.config = folder / "bus.conf"
        self.address = f"unix:path={self.socket_path}"
        self.proc: Optional[subprocess.Popen] = None

    def write_policy(self, deny_connect: bool) -> None:
        self.config.write_text(BUS_CONFIG.format(path=self.socket_path, extra=DENY_CONNECT if deny_connect else ""))

    def deny_connect(self, on: bool) -> None:
        """Refuse (or allow again) org.bluez.Device1.Connect for everyone, from now on."""
        self.write_policy(on)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)


@contextlib.contextmanager
def private_bus(folder: Path, deny_connect: bool = False) -> Iterator[PrivateBus]:
    """Start the daemon on a socket in ``folder``; ``.address`` is for DBUS_SYSTEM_BUS_ADDRESS."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.skip(SKIP_REASON)
    bus = PrivateBus(folder)
    bus.write_policy(deny_connect)
    # --print-address answers once the socket listens; the socket file alone appears at bind(),
    # a moment before, and a connect then is refused.
    bus.proc = proc = subprocess.Popen(
        [daemon, f"--config-file={bus.config}", "--nofork", "--nopidfile", "--print-address"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # a failure bound: it starts in milliseconds
        assert ready and proc.stdout.readline(), "dbus-daemon did not start within 60 s"
        yield bus
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()


@contextlib.contextmanager
def bus_without_bluez(folder: Path) -> Iterator[str]:
    """A private system bus with nobody on it; its address, for DBUS_SYSTEM_BUS_ADDRESS."""
    with private_bus(folder) as bus:
        yield bus.address


# --- the stand-in BlueZ ------------------------------------------------------------------

NUS_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_TX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"  # host -> meter (write)
NUS_RX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"  # meter -> host (notify)
DEFAULT_MTU = 23  # the default ATT MTU: 20 bytes a notification, a 31-byte answer in two
PI_MTU = 247  # what a Raspberry Pi's controller negotiates: a whole answer, or two, in one notification
ADVERTISE_EVERY = 0.2
RSSI = -60
MANUFACTURER_ID = 0x0B60  # RATOC's company id, from docs/protocol.md (not from the code under test)
FAILED = "org.bluez.Error.Failed"
NOT_READY = "org.bluez.Error.NotReady"
# How long the write's reply is held after the answer's notifications (``notify_before_reply``):
# bleak reads replies and signals on two connections, and this makes the signals win, by far.
REPLY_HOLD = 0.3
# BlueZ forgets a device it is not paired with this long after discovery stops (30 s there).
TEMPORARY_TIMEOUT = 2.0


def adapter_path(adapter: str = "hci0") -> str:
    return f"/org/bluez/{adapter}"


def device_path(mac: str, adapter: str = "hci0") -> str:
    return f"{adapter_path(adapter)}/dev_{mac.upper().replace(':', '_')}"


@dataclass(frozen=True)
class PiBehaviour:
    """What a Pi's BlueZ does that the plainest stand-in does not; each off unless a test turns it on."""

    mtu: int = DEFAULT_MTU
    notify_before_reply: bool = False  # the answer's notifications, then (REPLY_HOLD later) the write's reply
    bonded: bool = False  # the GATT objects stay across a disconnect (else removed, then exported anew)
    paired: bool = True  # False: a temporary device, on the bus only while discovered or connected
    adapters: Tuple[str, ...] = ("hci0",)
    device_adapter: str = "hci0"  # the adapter the meter is in range of


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
        """org.bluez.Adapter1 of one adapter (hci0, hci1, ...)."""

        Address = readable("Address", "s", lambda a: f"00:1A:7D:DA:71:{0x13 + a.index:02X}")
        Name = readable("Name", "s", lambda a: "stand-in")
        Powered = readable("Powered", "b", lambda a: a.bluez.powered)
        Discovering = readable("Discovering", "b", lambda a: a.adapter in a.bluez.discovering)
        Roles = readable("Roles", "as", lambda a: ["central", "peripheral"])

        def __init__(self, bluez: "StandInBlueZ", name: str, index: int) -> None:
            super().__init__("org.bluez.Adapter1")
            self.bluez, self.adapter, self.index = bluez, name, index  # (self.name is the interface's)

        @method()
        def SetDiscoveryFilter(self, properties: "a{sv}"):  # noqa: F821, N802 (D-Bus names and signatures)
            self.bluez.calls.append("SetDiscoveryFilter")

        @method()
        def StartDiscovery(self):  # noqa: N802
            self.bluez.calls.append("StartDiscovery")
            if self.adapter != self.bluez.pi.adapters[0]:
                self.bluez.calls.append(f"StartDiscovery {self.adapter}")
            if not self.bluez.powered:
                raise DBusError(NOT_READY, "Resource Not Ready")
            self.bluez.set_discovering(self.adapter, True)

        @method()
        def StopDiscovery(self):  # noqa: N802
            self.bluez.calls.append("StopDiscovery")
            self.bluez.set_discovering(self.adapter, False)

        @method()
        def RemoveDevice(self, device: "o"):  # noqa: F821, N802
            self.bluez.calls.append("RemoveDevice")
            self.bluez.vanish()

    class Device(ServiceInterface):
        """org.bluez.Device1 of the RS-BTWATTCH2: paired and trusted as the README's setup leaves it, or not."""

        Address = readable("Address", "s", lambda d: d.bluez.mac)
        AddressType = readable("AddressType", "s", lambda d: "public")
        Name = readable("Name", "s", lambda d: d.bluez.name)
        Alias = readable("Alias", "s", lambda d: d.bluez.name)
        Adapter = readable("Adapter", "o", lambda d: adapter_path(d.bluez.pi.device_adapter))
        Paired = readable("Paired", "b", lambda d: d.bluez.pi.paired)
        Bonded = readable("Bonded", "b", lambda d: d.bluez.pi.paired)
        Trusted = readable("Trusted", "b", lambda d: d.bluez.pi.paired)
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
        MTU = readable("MTU", "q", lambda c: c.bluez.pi.mtu)

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
        async def WriteValue(self, value: "ay", options: "a{sv}"):  # noqa: F821, N802
            if "write" not in self.flags and "write-without-response" not in self.flags:
                raise DBusError("org.bluez.Error.NotPermitted", "Write not permitted")
            kind = options.get("type")
            self.bluez.write_types.append(kind.value if kind is not None else "request")
            await self.bluez.written(bytes(value))

        def notify(self, data: bytes) -> None:
            self.value = data
            self.emit_properties_changed({"Value": data})

    return Adapter, Device, Service, Characteristic


class StandInBlueZ:
    """``org.bluez`` with one RS-BTWATTCH2, on its own event loop thread; see the module's docstring."""

    def __init__(self, address: str, mac: str, meter: Any, pi: PiBehaviour = PiBehaviour(),
                 bus: Optional[PrivateBus] = None) -> None:
        self.address = address
        self.mac = mac.upper()
        self.name = "BTWATTCH2_" + self.mac.replace(":", "")[-4:]
        self.meter = meter
        self.pi = pi
        self.bus = bus
        self.path = device_path(self.mac, pi.device_adapter)
        self.powered = True
        self.discovering: set = set()  # the adapters discovering
        self.connected = False
        self.resolved = False
        self.present = True  # in range
        self.exported = False  # the Device1 object is on the bus
        self.muted = False
        self.heals_on_resubscribe = True
        self.half_opens = 0
        self.connect_failures = 0
        self.notify_failures = 0
        # (meter second, measurement, the client subscribed) per measurement answered
        self.ledger: List[Tuple[dt.datetime, Any, bool]] = []
        self.writes: List[bytes] = []
        self.write_types: List[str] = []  # "request" (with response) or "command", per write
        self.notified: List[int] = []  # the size of each notification sent
        self.advertised: List[bytes] = []  # manufacturer data sent while discovering
        self.calls: List[str] = []
        self.connects = 0
        self.removals = 0  # a temporary device forgotten (InterfacesRemoved)
        self.restarts = 0  # bluetoothd restarts: each moves the GATT objects to new paths
        self.gatt_exports = 0  # times the Nordic UART service's objects were exported
        self._decoder: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stand-in bluez", daemon=True)
        self._bus: Any = None
        self._gatt: List[Tuple[str, Any]] = []
        self._gatt_exported = False
        self._rx: Any = None
        self._advertiser: Optional[asyncio.TimerHandle] = None
        self._forget: Optional[asyncio.TimerHandle] = None
        self._holding = 0  # write replies being held back

    # --- life --------------------------------------------------------------------------

    def start(self) -> "StandInBlueZ":
        self._thread.start()
        self.call(self._start)
        return self

    async def _start(self) -> None:
        """Join the bus, export the adapters (and a paired device), own ``org.bluez``: bluetoothd starting."""
        from dbus_fast.aio import MessageBus

        adapter_cls, device_cls, _, _ = _interfaces()
        self._bus = await MessageBus(bus_address=self.address).connect()
        self._adapters = {name: adapter_cls(self, name, i) for i, name in enumerate(self.pi.adapters)}
        self._device = device_cls(self)
        for name, adapter in self._adapters.items():
            self._bus.export(adapter_path(name), adapter)
        if self.pi.paired:
            self._export_device()
        await self._bus.request_name("org.bluez")

    def close(self) -> None:
        """Leave the bus, then stop the loop's thread."""

        async def stop() -> None:
            for _ in range(int(2 * REPLY_HOLD / 0.05)):  # let a reply held back go out first
                if not self._holding:
                    break
                await asyncio.sleep(0.05)
            if self._bus is not None:
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
        if not self.exported:
            raise DBusError("org.freedesktop.DBus.Error.UnknownObject", "no such device")
        if not self.present:  # a bonded device's object, out of range
            raise DBusError(FAILED, "le-connection-abort-by-remote")
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
        if not self._gatt_exported:
            self._export_gatt()
        self._decoder = FrameDecoder(big_endian=True)
        self.resolved = True
        self._device.emit_properties_changed({"ServicesResolved": True})

    def _export_gatt(self) -> None:
        """The Nordic UART service's objects, at handles that move with each bluetoothd restart."""
        _, _, service_cls, char_cls = _interfaces()
        handle = 0x000C + 0x10 * self.restarts
        service = f"{self.path}/service{handle:04x}"
        self._rx = char_cls(self, NUS_RX, service, ["notify"])
        tx = char_cls(self, NUS_TX, service, ["write-without-response", "write"])
        self._gatt = [(service, service_cls(self.path)), (f"{service}/char{handle + 1:04x}", tx),
                      (f"{service}/char{handle + 3:04x}", self._rx)]
        for path, interface in self._gatt:
            self._bus.export(path, interface)
        self._gatt_exported = True
        self.gatt_exports += 1

    def _unexport_gatt(self) -> None:
        for path, interface in reversed(self._gatt):
            self._bus.unexport(path, interface)
        self._gatt, self._rx, self._gatt_exported = [], None, False

    def _export_device(self) -> None:
        if not self.exported:
            self.exported = True
            self._bus.export(self.path, self._device)

    def _unexport_device(self) -> None:
        if self.exported:
            if self._gatt_exported:
                self._unexport_gatt()
            self.exported = False
            self._bus.unexport(self.path, self._device)

    def drop(self) -> None:
        """The link goes down (asked for, or a fault): services go (unless bonded), then Connected turns false."""
        if self.resolved:
            self.resolved = False
            self._device.emit_properties_changed({"ServicesResolved": False})
        if not self.pi.bonded and self._gatt_exported:
            self._unexport_gatt()
        if self._rx is not None and self._rx.notifying:
            self._rx.notifying = False  # BlueZ ends the notify session with the link
            self._rx.emit_properties_changed({"Notifying": False})
        self.muted = False  # a link's silence ends with the link
        if self.connected:
            self.connected = False
            self._device.emit_properties_changed({"Connected": False})
        self._forget_later()

    def subscribe(self, characteristic: Any, on: bool) -> None:
        from dbus_fast import DBusError

        if characteristic is not self._rx or not self.connected:
            raise DBusError("org.bluez.Error.NotSupported", "Operation is not supported")
        if on and self.notify_failures:
            self.notify_failures -= 1
            raise DBusError(FAILED, "Operation failed with ATT error: 0x0e")
        characteristic.notifying = on
        characteristic.emit_properties_changed({"Notifying": on})
        if on and self.heals_on_resubscribe:
            self.muted = False

    async def written(self, data: bytes) -> None:
        """A write to TX: frame it as the meter would, answer its requests in notifications of MTU - 3 bytes."""
        from dbus_fast import DBusError

        if not self.connected:
            raise DBusError("org.bluez.Error.NotConnected", "Not Connected")
        self.writes.append(data)
        self._decoder.feed(data)
        answers = b""
        for frame in self._decoder:
            answer = self.meter.respond(frame.payload)
            up = self._rx is not None and self._rx.notifying and not self.muted
            self._record(frame.payload, answer, up)
            if up:
                answers += answer
        size = self.pi.mtu - 3
        for at in range(0, len(answers), size):
            self.notified.append(len(answers[at : at + size]))
            self._rx.notify(answers[at : at + size])
        if answers and self.pi.notify_before_reply:
            self._holding += 1
            try:
                await asyncio.sleep(REPLY_HOLD)
            finally:
                self._holding -= 1

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

    def set_discovering(self, adapter: str, on: bool) -> None:
        if on:
            self.discovering.add(adapter)
        else:
            self.discovering.discard(adapter)
        self._adapters[adapter].emit_properties_changed({"Discovering": on})
        if adapter != self.pi.device_adapter:
            return
        if self._advertiser is not None:
            self._advertiser.cancel()
            self._advertiser = None
        if on:
            self._advertise()
        else:
            self._forget_later()

    def _advertise(self) -> None:
        """One advertisement seen: what BlueZ signals for a device in range while discovering."""
        from dbus_fast import Variant

        if self.present and not self.connected:
            if not self.exported:
                self._export_device()  # a temporary device: found again (InterfacesAdded)
            data = self.meter.advertisement()
            self.advertised.append(data)
            self._device.emit_properties_changed(
                {"RSSI": RSSI, "ManufacturerData": {MANUFACTURER_ID: Variant("ay", data)}}
            )
        self._advertiser = self._loop.call_later(ADVERTISE_EVERY, self._advertise)

    def _forget_later(self) -> None:
        """An unpaired device, neither connected nor being discovered, is removed TEMPORARY_TIMEOUT later."""
        if self.pi.paired or self._forget is not None:
            return

        def forget() -> None:
            self._forget = None
            seen = self.present and self.pi.device_adapter in self.discovering
            if self.exported and not self.connected and not seen:
                self.removals += 1
                self._unexport_device()

        self._forget = self._loop.call_later(TEMPORARY_TIMEOUT, forget)

    # --- fault switches (from the test's thread) ---------------------------------------

    def mute(self, heals_on_resubscribe: bool = True) -> None:
        """Notifications stop while the link stays up."""

        def apply() -> None:
            self.muted, self.heals_on_resubscribe = True, heals_on_resubscribe

        self.call(apply)

    def vanish(self) -> None:
        """The device goes out of range: its link drops and its objects go (InterfacesRemoved), at once,
        or TEMPORARY_TIMEOUT later for an unpaired one, or never for a bonded one."""

        def apply() -> None:
            if not self.present:
                return
            self.drop()
            self.present = False
            if self.pi.paired and not self.pi.bonded:
                self._unexport_device()
            # bonded: its objects stay; unpaired: forgotten TEMPORARY_TIMEOUT later (drop() saw to it)

        if threading.current_thread() is self._thread:
            apply()
        else:
            self.call(apply)

    def reappear(self) -> None:
        """The device is in range again: a paired one's objects come back (InterfacesAdded), ready to
        connect; an unpaired one is found by the next discovery."""

        def apply() -> None:
            if not self.present:
                self.present = True
                if self.pi.paired:
                    self._export_device()

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
            for adapter in self._adapters.values():
                adapter.emit_properties_changed({"Powered": on})

        self.call(apply)

    def deny_connect(self, on: bool) -> None:
        """The bus refuses Connect (AccessDenied), as for a service user outside the `bluetooth` group."""
        assert self.bus is not None, "stand_in_bluez(..., ) makes the bus this needs"
        self.bus.deny_connect(on)

    def leave(self) -> None:
        """bluetoothd stops (an upgrade, a crash): ``org.bluez`` leaves the bus, every link with it,
        and no InterfacesRemoved is sent."""

        def apply() -> None:
            for handle in (self._advertiser, self._forget):
                if handle is not None:
                    handle.cancel()
            self._advertiser = self._forget = None
            self._bus.disconnect()
            self._bus = None
            self.connected = self.resolved = self.muted = False
            self.exported = self._gatt_exported = False
            self._gatt, self._rx = [], None
            self.discovering.clear()

        self.call(apply)

    def come_back(self) -> None:
        """bluetoothd starts again: the same adapters and device, the GATT objects at new paths once connected."""
        self.restarts += 1
        self.call(self._start)

    def served(self) -> List[Tuple[dt.datetime, Any, bool]]:
        """A copy of the ledger, taken on the service's loop."""
        return self.call(lambda: list(self.ledger))


@contextlib.contextmanager
def stand_in_bluez(folder: Path, mac: str, meter: Any, pi: PiBehaviour = PiBehaviour(),
                   deny_connect: bool = False) -> Iterator[StandInBlueZ]:
    """A private system bus with the stand-in BlueZ on it; ``.address`` for DBUS_SYSTEM_BUS_ADDRESS."""
    pytest.importorskip("dbus_fast", reason="dbus-fast comes with bleak, the [ble] extra")
    with private_bus(folder, deny_connect) as bus:
        bluez = StandInBlueZ(bus.address, mac, meter, pi, bus).start()
        try:
            yield bluez
        finally:
            bluez.close()
