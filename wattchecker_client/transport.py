"""Open a byte stream to a meter from an address string.

Addresses:
  ``00:0C:BF:12:34:56``  RFCOMM socket from the standard library (channel given,
                         or looked up over SDP when the optional ``bluetooth``
                         module is importable)
  ``/dev/rfcomm0``       a tty (``rfcomm bind``), put in raw mode
  ``tcp://HOST:PORT``    TCP, for ser2net-style bridges and the simulator
  ``sim://[?opt=val&..]`` the built-in simulated meter, in this process (opened
                         by ``meter.link_opener``, which sits above the simulator)

Every link has read and write timeouts, and every way a link can fail
surfaces as ``LinkError`` so the caller has one thing to catch and reconnect on.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import sys
import termios
from typing import Callable, Optional
from urllib.parse import urlsplit

from .errors import SetupError

DEFAULT_TIMEOUT = 5.0
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


class LinkError(Exception):
    """The link to the meter failed or timed out; reconnecting may help."""


class LinkTimeout(LinkError):
    """Nothing arrived (or could be sent) within the timeout."""


RfcommFactory = Callable[[str, int, float], socket.socket]

# Models whose MAC address means Bluetooth LE (opened by ble.py) rather than RFCOMM.
BLE_MODELS = ("btwattch2",)


def is_ble(address: str, model: str) -> bool:
    """A meter reached over Bluetooth LE: an RS-BTWATTCH2 at a MAC address (not over tcp:// or a tty)."""
    return model in BLE_MODELS and bool(MAC_RE.match(address.strip()))


class Link:
    """A connected byte stream over a file descriptor, with poll-based timeouts."""

    def __init__(self, fd: int, name: str, close: Callable[[], None], timeout: float) -> None:
        self.fd = fd
        self.name = name
        self.timeout = timeout
        self._close = close
        self._closed = False

    def read(self, max_bytes: int = 4096, timeout: Optional[float] = None) -> bytes:
        """Return at least one byte, or raise LinkTimeout / LinkError."""
        self._wait(select.POLLIN, self.timeout if timeout is None else timeout, "reading")
        try:
            data = os.read(self.fd, max_bytes)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise LinkError(f"{self.name}: read failed: {exc.strerror or exc}") from None
        if not data:
            raise LinkError(f"{self.name}: connection closed by the other end")
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait(select.POLLOUT, self.timeout, "writing")
            try:
                sent = os.write(self.fd, view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise LinkError(f"{self.name}: write failed: {exc.strerror or exc}") from None
            view = view[sent:]

    def _wait(self, event: int, timeout: float, doing: str) -> None:
        if self._closed:
            raise LinkError(f"{self.name}: link is closed")
        poller = select.poll()
        poller.register(self.fd, event)
        ready = poller.poll(max(0.0, timeout) * 1000)
        if not ready:
            raise LinkTimeout(f"{self.name}: timed out {doing} after {timeout:g} s")
        revents = ready[0][1]
        if revents & select.POLLNVAL:
            raise LinkError(f"{self.name}: link is closed")
        # POLLHUP/POLLERR with data still readable: let read() drain it first.
        if not revents & event and revents & (select.POLLHUP | select.POLLERR):
            raise LinkError(f"{self.name}: link hung up")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._close()
            except OSError:
                pass

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def socket_link(
    sock: socket.socket,
    name: str,
    timeout: float,
    on_close: Optional[Callable[[], None]] = None,
) -> Link:
    """Wrap a connected socket; the Link owns it from now on."""
    sock.setblocking(False)

    def close() -> None:
        if on_close is not None:
            on_close()
        sock.close()

    return Link(sock.fileno(), name, close, timeout)


# --- address dispatch ----------------------------------------------------


def open_link(
    address: str,
    *,
    channel: Optional[int] = None,
    timeout: float = DEFAULT_TIMEOUT,
    rfcomm_factory: Optional[RfcommFactory] = None,
) -> Link:
    """Open whatever ``address`` names; raise LinkError (retry) or SetupError (don't).

    ``sim://`` is not opened here: the simulator sits above this module, and
    ``meter.link_opener`` dispatches to it.
    """
    address = address.strip()
    if MAC_RE.match(address):
        return open_rfcomm(address.upper(), channel, timeout, rfcomm_factory)
    if address.startswith("tcp://"):
        return open_tcp(address, timeout)
    if address.startswith("/"):
        return open_tty(address, timeout)
    if address.startswith("sim:"):
        raise SetupError(f"{address!r}: open the simulated meter through meter.link_opener")
    raise SetupError(
        f"address {address!r} is not a Bluetooth MAC (00:0C:BF:12:34:56), "
        "a tty path (/dev/rfcomm0), tcp://HOST:PORT or sim://"
    )


# --- RFCOMM ------------------------------------------------------------------


def _stdlib_rfcomm(mac: str, channel: int, timeout: float) -> socket.socket:
    """Connect an RFCOMM socket with nothing but the standard library."""
    family = getattr(socket, "AF_BLUETOOTH", None)
    if family is None:
        raise SetupError(
            f"this Python ({sys.executable}) was built without Bluetooth sockets "
            "(socket.AF_BLUETOOTH is missing): make the venv from the system Python "
            "(/usr/bin/python3 -m venv), or run `sudo rfcomm bind /dev/rfcomm0 "
            f"{mac} {channel}` and use /dev/rfcomm0 as the address"
        )
    try:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.BTPROTO_RFCOMM)
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT:
            raise SetupError(
                "the kernel has no Bluetooth sockets (errno 97, EAFNOSUPPORT): check "
                "that the adapter is up (`bluetoothctl show`) and the bluetooth and "
                "rfcomm kernel modules are loaded"
            ) from None
        raise LinkError(f"cannot create an RFCOMM socket: {exc}") from None
    try:
        sock.settimeout(timeout)
        sock.connect((mac, channel))
    except BaseException:
        sock.close()
        raise
    return sock


def find_channel(mac: str) -> int:
    """Look up the meter's serial-port channel over SDP (needs the optional `bluetooth` module)."""
    try:
        import bluetooth  # type: ignore[import-not-found]
    except ImportError:
        raise SetupError(
            f"no RFCOMM channel configured for {mac}, and SDP lookup needs the optional "
            f"`bluetooth` module: set the channel (find it with `sdptool browse {mac}`)"
        ) from None
    try:
        services = bluetooth.find_service(uuid="1101", address=mac)
    except Exception as exc:  # the module raises its own error types
        raise LinkError(f"SDP lookup on {mac} failed: {exc}") from None
    for service in services:
        if service.get("protocol") == "RFCOMM" and service.get("port"):
            return int(service["port"])
    raise LinkError(f"SDP lookup on {mac} found no serial-port (RFCOMM) service")


def open_rfcomm(
    mac: str,
    channel: Optional[int],
    timeout: float,
    factory: Optional[RfcommFactory] = None,
) -> Link:
    if channel is None:
        channel = find_channel(mac)
    if not 1 <= channel <= 30:
        raise SetupError(f"RFCOMM channel {channel} is outside 1..30")
    factory = factory or _stdlib_rfcomm
    name = f"{mac} channel {channel}"
    try:
        sock = factory(mac, channel, timeout)
    except socket.timeout:
        raise LinkTimeout(f"{name}: connect timed out after {timeout:g} s") from None
    except OSError as exc:
        raise LinkError(f"{name}: connect failed: {exc.strerror or exc}") from None
    return socket_link(sock, name, timeout)


# --- TCP ----------------------------------------------------------------------


def parse_tcp(address: str) -> tuple:
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise SetupError(f"address {address!r} must look like tcp://HOST:PORT")
    return parts.hostname, port


def open_tcp(address: str, timeout: float) -> Link:
    host, port = parse_tcp(address)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise LinkTimeout(f"{address}: connect timed out after {timeout:g} s") from None
    except OSError as exc:
        raise LinkError(f"{address}: connect failed: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return socket_link(sock, address, timeout)


# --- tty ----------------------------------------------------------------------


def make_raw(fd: int) -> None:
    """Raw 8-bit mode: no echo, no line editing, no CR/LF translation, no flow control."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
        | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
        | termios.IXOFF | termios.IXANY
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


def open_tty(path: str, timeout: float) -> Link:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise LinkError(
            f"{path} does not exist: bind the meter first (`sudo rfcomm bind {path} MAC CHANNEL`)"
        ) from None
    except PermissionError:
        raise LinkError(
            f"{path}: permission denied: add this user to the tty's group (usually `dialout`)"
        ) from None
    except OSError as exc:
        raise LinkError(f"{path}: open failed: {exc.strerror or exc}") from None
    try:
        make_raw(fd)
        termios.tcflush(fd, termios.TCIOFLUSH)
    except termios.error as exc:
        os.close(fd)
        if exc.args and exc.args[0] == errno.ENOTTY:
            raise SetupError(f"{path} is not a tty") from None
        raise LinkError(f"{path}: cannot set raw mode: {exc}") from None
    return Link(fd, path, lambda: os.close(fd), timeout)
