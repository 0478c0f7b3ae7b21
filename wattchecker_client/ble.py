"""The RS-BTWATTCH2's Bluetooth LE link, made to look like every other link.

bleak is asyncio; the rest of the client reads blocking ``Link``s, one thread
per meter. A real socketpair joins the two: the reader gets an fd-based
``transport.Link`` on one end; a bridge coroutine owns the other end, writes
each notification of the Nordic UART RX characteristic into it, and forwards
what the reader writes to the TX characteristic. Notifications arrive split at
the ATT payload (20 bytes by default; at a Pi's MTU of 247 a whole answer, or
two), and the decoder above frames by length, so they are just a stream.

One event loop thread per BLE meter (per ``BleOpener``), kept across that
meter's reconnects: a silent meter, or a bleak call that wedges, holds up only
its own loop, never another meter's; every await has a timeout besides. bleak
keeps one D-Bus connection per loop, so a few meters cost a few connections.

What BlueZ does in practice, and the answer here:

- a connect that half-succeeds (services not resolved, start_notify fails):
  disconnect that client, so no stale link stays behind, and connect again;
- notifications that stop while the link looks up: when a request gets no byte
  back within ``silence_timeout``, re-subscribe once (stop, start notify); the
  next request unanswered as well: close the link, and the reader reconnects;
- no adapter, adapter off, bluetoothd or D-Bus not running: a ``LinkError``
  whose one line says what to run; the reader retries with backoff.
- bluetoothd restarted (an upgrade, a crash): bleak's view of BlueZ (one per
  event loop) keeps the old objects and never learns the new paths, so every
  connect after is half-open ("Multiple Characteristics with this UUID"). Once
  a call meets BlueZ gone or an object unknown, the next open starts a fresh
  event loop (a fresh view) and first waits, up to the connect timeout, for
  ``org.bluez`` to be back, so the link heals as soon as it is.

``bleak`` is the optional extra ``[ble]``, imported only when a BLE link opens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Iterable, List, Optional

from .errors import SetupError
from .transport import DEFAULT_TIMEOUT, Link, LinkError, LinkTimeout, is_ble

log = logging.getLogger(__name__)

NUS_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_TX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"  # host -> meter
NUS_RX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"  # meter -> host, notifications
# The default ATT payload (MTU 23 - 3); requests are at most 12 bytes anyway.
WRITE_CHUNK = 20
# A connect can half-succeed; one more try on the same open, then the reader's backoff.
CONNECT_ATTEMPTS = 2
# bleak's connect includes a scan for the address; less than this is too tight.
MIN_CONNECT_TIMEOUT = 10.0
SILENCE_TIMEOUT = 3.0
DEFAULT_BUS = "unix:path=/run/dbus/system_bus_socket"
# D-Bus errors that mean bluetoothd left (or restarted, and the path we hold is gone).
BLUEZ_GONE = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.NoReply",  # it left (or hung) mid-call
)
# How often to ask the bus whether org.bluez is back, while it is not.
BLUEZ_POLL = 0.2
# What to check when BlueZ cannot reach the meter over the air.
OUT_OF_REACH = "is the meter plugged in, in range, and not connected to a phone?"

# bleak.BleakClient or a stand-in: (address, disconnected_callback=..., timeout=...)
ClientFactory = Callable[..., Any]


def import_bleak(needed_for: str = "a Bluetooth LE meter (model btwattch2 at a MAC address)") -> Any:
    """The bleak module, or SetupError naming the extra: reinstalling is the only fix."""
    try:
        import bleak
    except ImportError:
        raise SetupError(f"{needed_for} needs bleak: pip install 'wattchecker-client[ble]'") from None
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        quiet_bleak(os.path.dirname(bleak.__file__))
    return bleak


class FromPackage(logging.Filter):
    """Drops records logged from files under one folder."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(self.folder)


def quiet_bleak(folder: str) -> None:
    """Keep bleak's own warnings for -v: they repeat, once per retry, what our one line says,
    or guess at BlueZ's version where bluetoothctl is missing (bleak 1.x through the root logger)."""
    bleak_log = logging.getLogger("bleak")
    if bleak_log.level == logging.NOTSET:
        bleak_log.setLevel(logging.ERROR)
    root = logging.getLogger()
    if not any(isinstance(f, FromPackage) for f in root.filters):
        root.addFilter(FromPackage(folder))


def adapter_args(adapter: Optional[str], **bluez: Any) -> Dict[str, Any]:
    """bleak's keyword arguments for a client or scanner on ``adapter`` (hci1; None: BlueZ's default),
    with ``bluez``'s BlueZ-only ones (a scan's filters). bleak 0.21 takes ``adapter=``; since it grew a
    ``bluez`` argument for clients too, ``adapter`` goes in there (the keyword is deprecated)."""
    if adapter is None:
        return {"bluez": bluez} if bluez else {}
    import inspect

    if "bluez" in inspect.signature(import_bleak().BleakClient.__init__).parameters:
        return {"bluez": {**bluez, "adapter": adapter}}
    return {"adapter": adapter, **({"bluez": bluez} if bluez else {})}


def client_on(adapter: Optional[str]) -> Optional[ClientFactory]:
    """A factory of bleak clients on ``adapter`` (a device's ``adapter: hci1``), bleak imported at first
    use; None for BlueZ's default adapter (the opener's own default, bleak.BleakClient)."""
    if adapter is None:
        return None

    def factory(address: str, **kwargs: Any) -> Any:
        return import_bleak().BleakClient(address, **kwargs, **adapter_args(adapter))

    return factory


def check_setup(meters: Iterable[Any]) -> List[str]:
    """Start-up's check (``daemon.preflight``, so also check-config), for meters with ``address`` and
    ``model``: a BLE meter without bleak installed is a SetupError there, not a reader that stops later."""
    if any(is_ble(m.address, m.model) for m in meters):
        import_bleak()
    return []


def system_bus() -> str:
    """The D-Bus system bus address bleak connects to (dbus-fast reads the same variable)."""
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_BUS


def explain(exc: BaseException) -> str:
    """What bleak, D-Bus or BlueZ raised, as one line a user can act on."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"timed out ({OUT_OF_REACH})"
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        return (
            f"cannot reach BlueZ: no D-Bus system bus at {system_bus()} ({exc.strerror}): "
            "start D-Bus and Bluetooth (`sudo systemctl start dbus bluetooth`)"
        )
    if isinstance(exc, PermissionError):
        return (
            f"the D-Bus system bus at {system_bus()} refused this process ({exc.strerror}): "
            "a hardened service must keep AF_UNIX and must not hide /run/dbus"
        )
    dbus_error = getattr(exc, "dbus_error", "") or ""
    reason = getattr(getattr(exc, "reason", None), "name", "")
    text = " ".join(str(a) for a in exc.args if isinstance(a, str)) or type(exc).__name__
    lowered = text.lower()
    if dbus_error in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner") or (
        dbus_error == "org.freedesktop.DBus.Error.NoReply" and "disconnected" in lowered  # it left mid-call
    ):
        return "bluetoothd is not running (no org.bluez on the D-Bus system bus): `sudo systemctl start bluetooth`"
    if dbus_error == "org.bluez.Error.NotConnected":  # a write to a link BlueZ knows is down (after a restart)
        return "the meter or BlueZ dropped the BLE connection"
    if dbus_error == "org.bluez.Error.NotReady" or reason == "POWERED_OFF" or "powered" in lowered:
        return "the Bluetooth adapter is powered off: `bluetoothctl power on` (and check `rfkill list`)"
    if lowered.startswith("adapter ") and lowered.endswith(" not found"):  # bleak, for adapter: hci1
        return f"{text}: check `adapter:` (or --adapter) against `bluetoothctl list`"
    if reason in ("NO_BLUETOOTH", "NO_BLE_CENTRAL_ROLE") or "no bluetooth adapters" in lowered:
        return f"no Bluetooth LE adapter found ({text}): check `bluetoothctl list` and `rfkill list`"
    if dbus_error == "org.freedesktop.DBus.Error.AccessDenied" or reason.startswith("DENIED"):
        # dbus-daemon's text is a paragraph of rules and pids; the method refused is what helps.
        called = re.search(r'interface="([^"]+)" member="([^"]+)"', text)
        what = f" ({called[1]}.{called[2]})" if called else ""
        return (
            f"D-Bus denied this process a call to BlueZ{what}: run the service as root or as a member of "
            "group `bluetooth` (`sudo usermod -aG bluetooth USER`, then restart it)"
        )
    if dbus_error == "org.bluez.Error.Failed":
        # BlueZ's catch-all, with its reason as the body (le-connection-abort-by-remote, ...): mostly radio.
        return f"BlueZ failed: {getattr(exc, 'dbus_error_details', None) or 'no reason given'} ({OUT_OF_REACH})"
    if type(exc).__name__ == "BleakDeviceNotFoundError":
        return (
            "not found by a scan: is it plugged in, in range, and not connected to another host "
            "(a phone app)? `wattchecker-client scan` lists the meters nearby"
        )
    return f"{text} ({type(exc).__name__})"


def link_error(name: str, exc: BaseException) -> LinkError:
    cls = LinkTimeout if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) else LinkError
    return cls(f"{name}: {explain(exc)}")


@dataclass
class BleStats:
    """Counters for what goes wrong on one meter's BLE links, kept across reconnects."""

    connects: int = 0
    half_open: int = 0
    notifications: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    resubscribes: int = 0
    silent_closes: int = 0
    drops: int = 0
    overflow_bytes: int = 0

    def summary(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


class ServiceGone(Exception):
    """No org.bluez on the bus, found by asking the bus itself."""

    dbus_error = "org.freedesktop.DBus.Error.NameHasNoOwner"


class HalfOpen(Exception):
    """Connected, but the link cannot carry the meter's protocol (BlueZ's half-open link)."""


class BleLink(Link):
    """The reader's end of the socketpair; its errors say why the bridge behind it closed."""

    def __init__(self, fd: int, name: str, close: Callable[[], None], timeout: float, bridge: "Bridge") -> None:
        super().__init__(fd, name, close, timeout)
        self.bridge = bridge

    def read(self, max_bytes: int = 4096, timeout: Optional[float] = None) -> bytes:
        try:
            return super().read(max_bytes, timeout)
        except LinkTimeout:
            raise
        except LinkError as exc:
            raise self._why(exc) from None

    def write(self, data: bytes) -> None:
        try:
            super().write(data)
        except LinkTimeout:
            raise
        except LinkError as exc:
            raise self._why(exc) from None

    def _why(self, exc: LinkError) -> LinkError:
        return LinkError(f"{self.name}: {self.bridge.reason}") if self.bridge.reason else exc


class LoopThread:
    """An asyncio event loop on a daemon thread of its own; blocking threads hand it coroutines."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started at first use."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)
                self._thread.start()
            return self._loop

    def run(self, coroutine: Any, timeout: float) -> Any:
        """Run ``coroutine`` on the loop and wait for its result; concurrent.futures.TimeoutError after ``timeout``."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        """Stop the loop and its thread (tests and one-shot commands; the daemon lets it run)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            # bleak's tasks (its watch on its D-Bus connection) end here, not in a "destroyed but pending".
            try:
                asyncio.run_coroutine_threadsafe(_cancel_others(), loop).result(2)
            except Exception as exc:
                log.debug("%s: tasks left at close: %r", self.name, exc)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


async def _cancel_others() -> None:
    """Cancel every other task on this loop and wait (briefly) for them to end."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=1)


class BleOpener:
    """Opens the BLE link to one RS-BTWATTCH2 afresh at each call, for reconnecting."""

    def __init__(
        self,
        mac: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        client_factory: Optional[ClientFactory] = None,
        silence_timeout: Optional[float] = None,
        connect_timeout: Optional[float] = None,
        connect_attempts: int = CONNECT_ATTEMPTS,
    ) -> None:
        self.mac = mac.upper()
        self.name = f"{self.mac} (BLE)"
        self.timeout = timeout
        self.client_factory = client_factory
        # Shorter than the reader's give-up (4 tries of 2 s), so a re-subscribe gets its chance.
        self.silence_timeout = silence_timeout if silence_timeout is not None else min(SILENCE_TIMEOUT, timeout)
        self.connect_timeout = connect_timeout if connect_timeout is not None else max(timeout, MIN_CONNECT_TIMEOUT)
        self.connect_attempts = connect_attempts
        self.stats = BleStats()
        self.loop = LoopThread(f"ble {self.mac}")
        # Set when a call met BlueZ gone: bleak's view of it, kept per event loop, is stale.
        self.bluez_left = False

    def __call__(self) -> Link:
        factory = self.client_factory or import_bleak().BleakClient
        if self.bluez_left:
            stale, self.loop = self.loop, LoopThread(f"ble {self.mac}")
            stale.close()
        ours, theirs = socket.socketpair()
        bridge = Bridge(self, factory, theirs)
        # A safety net only: every step inside has its own timeout.
        deadline = self.connect_attempts * (self.connect_timeout + 3 * self.timeout)
        try:
            self.loop.run(bridge.open(), deadline)
        except concurrent.futures.TimeoutError:
            ours.close()
            raise LinkTimeout(f"{self.name}: connect did not finish within {deadline:g} s") from None
        except BaseException:
            ours.close()
            raise

        def close() -> None:
            """Disconnect before the reader may reconnect, so BlueZ never holds two links."""
            try:
                self.loop.run(bridge.finish("closed by this client"), 2 * self.timeout)
            except (concurrent.futures.TimeoutError, RuntimeError):
                log.debug("%s: disconnect did not finish in time", self.name)
            ours.close()

        ours.setblocking(False)
        return BleLink(ours.fileno(), self.name, close, self.timeout, bridge)

    def close(self) -> None:
        """Stop this meter's event loop (tests and one-shot commands; the daemon lets it run)."""
        self.loop.close()
        log.debug("%s: %s", self.name, self.stats.summary())


class Bridge:
    """One BLE connection: the bleak client on one side, our end of the socketpair on the other.

    Runs only on the opener's event loop; ``reason`` says why it closed.
    """

    def __init__(self, opener: BleOpener, factory: ClientFactory, sock: socket.socket) -> None:
        self.opener = opener
        self.stats = opener.stats
        self.factory = factory
        self.sock = sock
        sock.setblocking(False)
        self.client: Any = None
        self.reason = ""
        self._rx: Any = None
        self._tx: Any = None
        self._with_response = False
        self._pump: Optional[asyncio.Task] = None
        self._silence: Optional[asyncio.TimerHandle] = None
        self._resubscribed = False
        self._resubscribing = False
        self._finished = False
        self._tasks: set = set()

    def _spawn(self, coroutine: Any) -> None:
        """Run ``coroutine`` on this loop, holding a reference until it ends (asyncio keeps none)."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- connecting --------------------------------------------------------

    async def open(self) -> None:
        """Connect and subscribe, dropping half-open links; LinkError when it cannot."""
        opener = self.opener
        error: BaseException = LinkError("no connect attempt")
        try:
            if opener.bluez_left:
                await self._bluez_back()
            for attempt in range(opener.connect_attempts):
                client = self.factory(
                    opener.mac, disconnected_callback=self._on_disconnected, timeout=opener.connect_timeout
                )
                try:
                    await asyncio.wait_for(client.connect(), opener.connect_timeout + 1)
                except Exception as exc:  # bleak and D-Bus raise many types; explain() sorts them
                    self._explain(exc)
                    await self._drop(client)
                    raise link_error(opener.name, exc) from None
                try:
                    await self._subscribe(client)
                except Exception as exc:
                    self.stats.half_open += 1
                    error = exc
                    log.info("%s: connected but %s; dropping that link", opener.name, self._explain(exc))
                    await self._drop(client)
                    continue
                self.client = client
                self.stats.connects += 1
                self._pump = asyncio.ensure_future(self._forward_writes())
                return
            raise LinkError(f"{opener.name}: connected {opener.connect_attempts} times, never usable: {explain(error)}")
        except BaseException:
            self.sock.close()
            raise

    async def _bluez_back(self) -> None:
        """Wait, up to the connect timeout, for org.bluez on the bus; LinkError if it stays away."""
        from dbus_fast import Message
        from dbus_fast.aio import MessageBus

        asked = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus", member="NameHasOwner", signature="s", body=["org.bluez"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opener.connect_timeout
        try:
            bus = await asyncio.wait_for(MessageBus(bus_address=system_bus()).connect(), self.opener.timeout)
        except Exception as exc:
            raise link_error(self.opener.name, exc) from None
        try:
            while not (await asyncio.wait_for(bus.call(asked), self.opener.timeout)).body[0]:
                if loop.time() >= deadline:
                    raise LinkError(f"{self.opener.name}: {explain(ServiceGone())}")
                await asyncio.sleep(BLUEZ_POLL)
        except asyncio.TimeoutError as exc:
            raise link_error(self.opener.name, exc) from None
        finally:
            bus.disconnect()
        log.info("%s: BlueZ is back on the bus; connecting afresh", self.opener.name)
        self.opener.bluez_left = False

    def _explain(self, exc: BaseException) -> str:
        """``explain(exc)``, noting on the opener when it says BlueZ left (its next open starts afresh)."""
        if getattr(exc, "dbus_error", None) in BLUEZ_GONE:
            self.opener.bluez_left = True
        return explain(exc)

    async def _subscribe(self, client: Any) -> None:
        services = client.services
        tx = services.get_characteristic(NUS_TX) if services is not None else None
        rx = services.get_characteristic(NUS_RX) if services is not None else None
        if tx is None or rx is None:
            raise HalfOpen("the Nordic UART service was not resolved")
        properties = set(tx.properties)
        if not properties & {"write", "write-without-response"}:
            raise HalfOpen(f"TX characteristic {NUS_TX} is not writable ({', '.join(sorted(properties))})")
        # With response when allowed: one request a second, and the write is confirmed.
        self._tx, self._rx, self._with_response = tx, rx, "write" in properties
        await asyncio.wait_for(client.start_notify(rx, self._on_notify), self.opener.timeout)

    async def _drop(self, client: Any) -> None:
        """Disconnect a client we give up on, so BlueZ keeps no stale link to the meter."""
        try:
            await asyncio.wait_for(client.disconnect(), self.opener.timeout)
        except Exception as exc:
            log.debug("%s: disconnect: %s", self.opener.name, explain(exc))

    # --- meter -> reader ---------------------------------------------------

    def _on_notify(self, sender: Any, data: bytearray) -> None:
        self.stats.notifications += 1
        self.stats.bytes_in += len(data)
        self._heard()
        view = memoryview(bytes(data))
        try:
            while view:
                view = view[self.sock.send(view):]
        except BlockingIOError:
            self.stats.overflow_bytes += len(view)  # the reader stopped reading; it will time out
        except OSError:
            pass  # our end is closing

    def _on_disconnected(self, client: Any) -> None:
        if client is self.client and not self._finished:
            self.stats.drops += 1
            self._spawn(self.finish("the meter or BlueZ dropped the BLE connection"))

    # --- reader -> meter -------------------------------------------------------

    async def _forward_writes(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self.sock, 4096)
                if not data:
                    break
                # Armed before the write: BlueZ may deliver the answer before the write's reply
                # (signals and replies reach bleak on two connections), and a notification heard
                # meanwhile disarms it; armed after, it would stay armed with the answer already in.
                self._expect_reply()
                for at in range(0, len(data), WRITE_CHUNK):
                    await asyncio.wait_for(
                        self.client.write_gatt_char(self._tx, data[at : at + WRITE_CHUNK], response=self._with_response),
                        self.opener.timeout,
                    )
                self.stats.bytes_out += len(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._spawn(self.finish(f"write to the meter failed: {self._explain(exc)}"))
            return
        self._spawn(self.finish("closed by this client"))

    # --- notifications that stop -------------------------------------------------

    def _expect_reply(self) -> None:
        # A request written while re-subscribing may lose its answer: only the next one counts.
        if self._silence is None and not self._finished and not self._resubscribing:
            loop = asyncio.get_running_loop()
            self._silence = loop.call_later(self.opener.silence_timeout, self._silent)

    def _heard(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        self._resubscribed = False

    def _silent(self) -> None:
        self._silence = None
        if self._finished:
            return
        if self._resubscribed:
            self.stats.silent_closes += 1
            self._spawn(
                self.finish(f"no notification for {self.opener.silence_timeout:g} s, even after re-subscribing")
            )
            return
        self._resubscribed = self._resubscribing = True
        self.stats.resubscribes += 1
        log.info("%s: no notification for %g s after a request; re-subscribing",
                 self.opener.name, self.opener.silence_timeout)
        self._spawn(self._resubscribe())

    async def _resubscribe(self) -> None:
        client, timeout = self.client, self.opener.timeout
        try:
            await asyncio.wait_for(client.stop_notify(self._rx), timeout)
        except Exception as exc:
            log.debug("%s: stop_notify: %s", self.opener.name, self._explain(exc))
        try:
            await asyncio.wait_for(client.start_notify(self._rx, self._on_notify), timeout)
        except Exception as exc:
            await self.finish(f"re-subscribing failed: {self._explain(exc)}")
        finally:
            self._resubscribing = False
        # The next request re-arms the timer: no answer to it either, and the link closes.

    # --- closing ------------------------------------------------------------------

    async def finish(self, reason: str) -> None:
        """Disconnect, then close our end, so the reader's next read says ``reason``; once."""
        if self._finished:
            return
        self._finished = True
        self.reason = reason
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        pump = self._pump
        # Wait for it to unregister our socket from the loop before the socket (and its
        # fd number) goes; before Python 3.12, wait_for can swallow a cancel: repeat it.
        while pump is not None and not pump.done() and pump is not asyncio.current_task():
            pump.cancel()
            await asyncio.wait([pump], timeout=0.05)
        if self.client is not None:
            await self._drop(self.client)
        self.sock.close()
        log.debug("%s: link closed: %s; %s", self.opener.name, reason, self.stats.summary())
