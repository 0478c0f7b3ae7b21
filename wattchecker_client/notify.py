"""sd_notify without libsystemd: READY=1, WATCHDOG=1 and STATUS= datagrams to $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)


class Notifier:
    """Talks to systemd when started by it; does nothing otherwise."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.address = self._address(environ.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = self._watchdog_interval(environ)
        self._sock: Optional[socket.socket] = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @staticmethod
    def _address(path: str) -> Optional[str]:
        if not path:
            return None
        if path.startswith("@"):  # abstract namespace
            return "\0" + path[1:]
        if path.startswith("/"):
            return path
        log.warning("ignoring NOTIFY_SOCKET=%r: not a unix socket path", path)
        return None

    @staticmethod
    def _watchdog_interval(environ: Mapping[str, str]) -> Optional[float]:
        """Half of WatchdogSec, as systemd advises, or None when no watchdog is asked for."""
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode("utf-8"), self.address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
