"""A stand-in ``org.freedesktop.timedate1`` on a real private dbus-daemon, served with dbus-fast.

It holds what systemd-timedated offers and the service reads: ``NTPSynchronized``
(settable from the test), beside ``NTP`` and ``Timezone`` so that the reply the
client picks out is one of several. ``gets`` counts the property reads, so a
test can see that the service asked (dbus-fast may read one twice for a Get).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any, Iterator

from .bluez import bus_without_bluez

# As systemd-timedated names itself (org.freedesktop.timedate1(5)), not from the code under test.
NAME = INTERFACE = "org.freedesktop.timedate1"
PATH = "/org/freedesktop/timedate1"


def _interface(stand_in: "StandInTimedate1") -> Any:
    from dbus_fast import PropertyAccess
    from dbus_fast.service import ServiceInterface, dbus_property

    class Timedate1(ServiceInterface):
        def __init__(self) -> None:
            super().__init__(INTERFACE)

        @dbus_property(access=PropertyAccess.READ)
        def NTPSynchronized(self) -> "b":  # noqa: F821, N802 (D-Bus names and signatures)
            stand_in.gets += 1
            return stand_in.synchronised

        @dbus_property(access=PropertyAccess.READ)
        def NTP(self) -> "b":  # noqa: F821, N802
            return True

        @dbus_property(access=PropertyAccess.READ)
        def Timezone(self) -> "s":  # noqa: F821, N802
            return "Asia/Tokyo"

    return Timedate1()


class StandInTimedate1:
    """timedate1 on its own event loop thread, on the bus at ``address``."""

    def __init__(self, address: str, synchronised: bool) -> None:
        self.address = address
        self.synchronised = synchronised
        self.gets = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stand-in timedate1", daemon=True)
        self._bus: Any = None

    def start(self) -> "StandInTimedate1":
        from dbus_fast.aio import MessageBus

        async def start() -> None:
            self._bus = await MessageBus(bus_address=self.address).connect()
            self._bus.export(PATH, _interface(self))
            await self._bus.request_name(NAME)

        self._thread.start()
        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def close(self) -> None:
        async def stop() -> None:
            self._bus.disconnect()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def timedate1_on_a_bus(folder: Path, synchronised: bool) -> Iterator[StandInTimedate1]:
    """A private bus with the stand-in on it; ``.address`` is for DBUS_SYSTEM_BUS_ADDRESS."""
    with bus_without_bluez(folder) as address:
        stand_in = StandInTimedate1(address, synchronised).start()
        try:
            yield stand_in
        finally:
            stand_in.close()
