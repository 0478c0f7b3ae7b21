"""A real dbus-daemon standing in for the system bus, with no bluetoothd on it: what bleak meets on a
machine where BlueZ is not running."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import wait_for

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
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""


@contextlib.contextmanager
def bus_without_bluez(folder: Path) -> Iterator[str]:
    """Start the daemon on a socket in ``folder``; its address, for DBUS_SYSTEM_BUS_ADDRESS."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.skip("dbus-daemon is not installed (Debian package dbus-daemon)")
    socket_path = folder / "system_bus_socket"
    config = folder / "bus.conf"
    config.write_text(BUS_CONFIG.format(path=socket_path))
    proc = subprocess.Popen([daemon, f"--config-file={config}", "--nofork", "--nopidfile"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(socket_path.exists, timeout=10, what="dbus-daemon's socket")
        yield f"unix:path={socket_path}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
