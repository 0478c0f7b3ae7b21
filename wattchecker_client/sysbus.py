"""Just enough D-Bus to read one property of a system service, with the standard library only.

The service reads one boolean (timedate1's NTPSynchronized) now and then; a
D-Bus library would be a dependency for that. This speaks the wire protocol
over the bus's unix socket: the EXTERNAL authentication (the kernel vouches
for our uid), Hello, one Properties.Get, its reply. Little-endian out; either
byte order in. Every failure is a ``BusError`` naming what went wrong; the
socket's timeout bounds the whole exchange.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, Dict, List, Optional, Tuple

SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
METHOD_CALL, METHOD_RETURN, ERROR = 1, 2, 3
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SIGNATURE = 1, 2, 3, 4, 5, 6, 8
MAX_MESSAGE = 1 << 20  # a property's answer is tens of bytes; more is not a bus we want to read
ALIGN = {"y": 1, "b": 4, "u": 4, "i": 4, "s": 4, "o": 4, "g": 1, "v": 1, "(": 8, "a": 4, "x": 8, "t": 8, "d": 8,
         "n": 2, "q": 2, "h": 4}


class BusError(Exception):
    """The bus or the service could not answer; the message says which and why."""


def system_bus_address(environ: Optional[Dict[str, str]] = None) -> str:
    """Where the system bus listens: $DBUS_SYSTEM_BUS_ADDRESS (as libdbus reads it), else the standard socket."""
    return (environ if environ is not None else os.environ).get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS


def unix_socket_path(address: str) -> str:
    """The socket of the first unix: entry of a bus address (``unix:path=`` or ``unix:abstract=``)."""
    for entry in address.split(";"):
        kind, _, params = entry.partition(":")
        if kind != "unix":
            continue
        values = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        if "path" in values:
            return _unescape(values["path"])
        if "abstract" in values:
            return "\0" + _unescape(values["abstract"])
    raise BusError(f"no unix socket in the bus address {address!r}")


def _unescape(value: str) -> str:
    """D-Bus addresses escape bytes as %XX."""
    from urllib.parse import unquote

    return unquote(value)


# --- marshalling: the few types a property read needs ---------------------------------


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def pad(self, n: int) -> None:
        self.data += bytes(-len(self.data) % n)

    def byte(self, value: int) -> None:
        self.data.append(value)

    def uint32(self, value: int) -> None:
        self.pad(4)
        self.data += struct.pack("<I", value)

    def string(self, value: str, code: str = "s") -> None:
        raw = value.encode()
        if code == "g":
            self.data.append(len(raw))
        else:
            self.uint32(len(raw))
        self.data += raw + b"\0"


def method_call(serial: int, destination: str, path: str, interface: str, member: str,
                signature: str = "", args: Tuple[str, ...] = ()) -> bytes:
    """One METHOD_CALL message whose arguments are all strings (``signature`` of s's)."""
    body = _Writer()
    for arg in args:
        body.string(arg)
    fields = _Writer()
    for code, kind, value in [(PATH, "o", path), (INTERFACE, "s", interface), (MEMBER, "s", member),
                              (DESTINATION, "s", destination)] + ([(SIGNATURE, "g", signature)] if signature else []):
        fields.pad(8)
        fields.byte(code)
        fields.string(kind, "g")
        fields.string(value, kind)
    head = struct.pack("<cBBBIII", b"l", METHOD_CALL, 0, 1, len(body.data), serial, len(fields.data))
    message = bytearray(head + fields.data)
    message += bytes(-len(message) % 8)
    return bytes(message + body.data)


class _Reader:
    def __init__(self, data: bytes, order: str) -> None:
        self.data = data
        self.order = order
        self.at = 0

    def align(self, code: str) -> None:
        self.at += -self.at % ALIGN.get(code, 1)

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise BusError("a message from the bus ends early")
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def value(self, code: str) -> Any:
        """One value of a basic type or a variant; containers are not needed here."""
        self.align(code)
        if code == "y":
            return self.take(1)[0]
        if code in "bui":
            (number,) = struct.unpack(self.order + ("i" if code == "i" else "I"), self.take(4))
            return bool(number) if code == "b" else number
        if code in "so":
            (length,) = struct.unpack(self.order + "I", self.take(4))
            return self.take(length + 1)[:-1].decode("utf-8", "replace")
        if code == "g":
            length = self.take(1)[0]
            return self.take(length + 1)[:-1].decode("ascii", "replace")
        if code == "v":
            signature = self.value("g")
            if len(signature) != 1:
                raise BusError(f"a variant of type {signature!r}: only basic types are read here")
            return self.value(signature)
        raise BusError(f"a value of type {code!r}: only basic types are read here")


def parse_message(data: bytes) -> Tuple[int, Dict[int, Any], bytes, str]:
    """(message type, header fields, body, byte order) of one whole message."""
    order = {b"l"[0]: "<", b"B"[0]: ">"}.get(data[0])
    if order is None:
        raise BusError(f"a message in byte order {data[:1]!r}")
    kind = data[1]
    body_length, _, fields_length = struct.unpack(order + "III", data[4:16])
    reader = _Reader(data[:16 + fields_length], order)
    reader.at = 16
    fields: Dict[int, Any] = {}
    while reader.at < 16 + fields_length:
        reader.align("(")
        code = reader.value("y")
        fields[code] = reader.value("v")
    start = 16 + fields_length + (-(16 + fields_length) % 8)
    return kind, fields, data[start:start + body_length], order


def message_length(head: bytes) -> int:
    """A whole message's length from its first 16 bytes."""
    order = "<" if head[:1] == b"l" else ">"
    body_length, _, fields_length = struct.unpack(order + "III", head[4:16])
    return 16 + fields_length + (-(16 + fields_length) % 8) + body_length


# --- the connection ----------------------------------------------------------------------


class Bus:
    """One authenticated connection to a bus, for a few method calls in a row."""

    def __init__(self, address: str, timeout: float) -> None:
        path = unix_socket_path(address)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.serial = 0
        self.buffer = b""
        try:
            self.sock.connect(path)
            self._authenticate()
            self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")
        except OSError as exc:
            self.close()
            raise BusError(f"the bus at {path.lstrip(chr(0))}: {exc.strerror or exc}") from None
        except BusError:
            self.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Bus":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _authenticate(self) -> None:
        self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
        line = self._line()
        if not line.startswith(b"OK "):
            raise BusError(f"the bus refused us: {line[:80]!r}")
        self.sock.sendall(b"BEGIN\r\n")

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._more()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _more(self) -> None:
        chunk = self.sock.recv(4096)
        if not chunk:
            raise BusError("the bus closed the connection")
        self.buffer += chunk

    def _message(self) -> bytes:
        while len(self.buffer) < 16:
            self._more()
        length = message_length(self.buffer[:16])
        if length > MAX_MESSAGE:
            raise BusError(f"a message of {length} bytes")
        while len(self.buffer) < length:
            self._more()
        message, self.buffer = self.buffer[:length], self.buffer[length:]
        return message

    def call(self, destination: str, path: str, interface: str, member: str, signature: str = "",
             args: Tuple[str, ...] = ()) -> List[Any]:
        """Call a method and return its reply's values (basic types only); its error as a BusError."""
        self.serial += 1
        self.sock.sendall(method_call(self.serial, destination, path, interface, member, signature, args))
        while True:
            kind, fields, body, order = parse_message(self._message())
            if kind not in (METHOD_RETURN, ERROR) or fields.get(REPLY_SERIAL) != self.serial:
                continue  # a signal (NameAcquired) or an answer to someone else
            reader = _Reader(body, order)
            values = [reader.value(code) for code in fields.get(SIGNATURE, "")]
            if kind == ERROR:
                detail = f": {values[0]}" if values and isinstance(values[0], str) else ""
                raise BusError(f"{fields.get(ERROR_NAME, 'an error')}{detail}")
            return values


def get_property(address: str, destination: str, path: str, interface: str, name: str, timeout: float) -> Any:
    """One property of one object on the bus at ``address`` (a fresh connection, closed after)."""
    try:
        with Bus(address, timeout) as bus:
            (value,) = bus.call(destination, path, "org.freedesktop.DBus.Properties", "Get", "ss", (interface, name))
            return value
    except (OSError, ValueError, struct.error) as exc:  # a timeout mid-way, a reply of the wrong shape
        raise BusError(f"{destination}: {exc}") from None
