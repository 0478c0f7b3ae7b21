"""Transports over real ptys and sockets; only the RFCOMM socket call itself is injected."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading

import pytest

from wattchecker_client import protocol
from wattchecker_client.transport import (
    LinkError,
    LinkTimeout,
    SetupError,
    find_channel,
    open_link,
)

from .conftest import ROOT

# Bytes a cooked tty would mangle: CR, LF, ^C, ^S/^Q, ^D, DEL, 0xAA.
AWKWARD = bytes([0x0D, 0x0A, 0x03, 0x13, 0x11, 0x04, 0x7F, 0xAA, 0x00, 0xFF])


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def read_exactly(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += os.read(fd, n - len(data))
    return data


# --- tty -----------------------------------------------------------------------


def test_tty_is_raw_both_ways(pty_pair):
    master, path = pty_pair
    with open_link(path, timeout=2) as link:
        link.write(AWKWARD)
        assert read_exactly(master, len(AWKWARD)) == AWKWARD
        os.write(master, AWKWARD)
        got = b""
        while len(got) < len(AWKWARD):
            got += link.read()
        assert got == AWKWARD
        # no echo: what we wrote did not come back to us
        with pytest.raises(LinkTimeout):
            link.read(timeout=0.1)


def test_tty_read_times_out_with_a_link_timeout(pty_pair):
    _, path = pty_pair
    with open_link(path, timeout=0.1) as link:
        with pytest.raises(LinkTimeout, match="timed out reading after 0.1 s"):
            link.read()


def test_tty_hang_up_is_a_link_error(pty_pair):
    master, path = pty_pair
    link = open_link(path, timeout=1)
    os.close(master)
    with pytest.raises(LinkError):
        link.read()
    link.close()


def test_missing_tty_says_how_to_bind_it(tmp_path):
    with pytest.raises(LinkError, match=r"does not exist: bind the meter first \(`sudo rfcomm bind"):
        open_link(str(tmp_path / "rfcomm9"))


def test_a_file_that_is_not_a_tty_is_a_setup_error(tmp_path):
    path = tmp_path / "plain"
    path.write_bytes(b"")
    with pytest.raises(SetupError, match="is not a tty"):
        open_link(str(path))


# --- TCP -----------------------------------------------------------------------


@pytest.fixture
def tcp_server():
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        try:
            conn, _ = listener.accept()
        except OSError:  # the test never connected; the listener was closed
            return
        accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{listener.getsockname()[1]}", accepted, thread
    for conn in accepted:
        conn.close()
    listener.close()


def test_tcp_round_trip_and_peer_close(tcp_server):
    address, accepted, thread = tcp_server
    with open_link(address, timeout=2) as link:
        thread.join(2)
        peer = accepted[0]
        link.write(protocol.get_data_request())
        assert peer.recv(100) == protocol.get_data_request()
        peer.sendall(AWKWARD)
        assert link.read() == AWKWARD
        peer.close()
        with pytest.raises(LinkError, match="connection closed by the other end"):
            link.read()


def test_tcp_read_timeout(tcp_server):
    address, _, _ = tcp_server
    with open_link(address, timeout=0.1) as link:
        with pytest.raises(LinkTimeout):
            link.read()


def test_tcp_refused_is_a_link_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(LinkError, match="connect failed"):
        open_link(f"tcp://127.0.0.1:{port}", timeout=1)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1", "tcp://:80", "tcp://host:port"])
def test_bad_tcp_address(address):
    with pytest.raises(SetupError, match="tcp://HOST:PORT"):
        open_link(address)


@pytest.mark.parametrize("address", ["rfcomm0", "00:0C:BF:12:34", "http://x", ""])
def test_unknown_address_names_the_accepted_forms(address):
    with pytest.raises(SetupError, match="is not a Bluetooth MAC"):
        open_link(address)


def test_closed_link_refuses_io(tcp_server):
    address, _, _ = tcp_server
    link = open_link(address, timeout=1)
    link.close()
    link.close()  # twice is harmless
    with pytest.raises(LinkError, match="closed"):
        link.write(b"x")


# --- RFCOMM ----------------------------------------------------------------------


def test_rfcomm_uses_the_injected_socket_factory():
    ours, theirs = socket.socketpair()
    calls = []

    def factory(mac, channel, timeout):
        calls.append((mac, channel, timeout))
        return ours

    with open_link("00:0c:bf:12:34:56", channel=6, timeout=1.5, rfcomm_factory=factory) as link:
        assert calls == [("00:0C:BF:12:34:56", 6, 1.5)]
        assert link.name == "00:0C:BF:12:34:56 channel 6"
        link.write(b"\xaa\x01")
        assert theirs.recv(10) == b"\xaa\x01"
    theirs.close()


def test_rfcomm_connect_failure_is_a_link_error():
    def factory(mac, channel, timeout):
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(LinkError, match="00:0C:BF:12:34:56 channel 6: connect failed: Connection refused"):
        open_link("00:0C:BF:12:34:56", channel=6, rfcomm_factory=factory)


def test_rfcomm_channel_out_of_range():
    with pytest.raises(SetupError, match="outside 1..30"):
        open_link("00:0C:BF:12:34:56", channel=31)


@pytest.mark.skipif(hasattr(socket, "AF_BLUETOOTH"), reason="this Python has AF_BLUETOOTH")
def test_python_without_bluetooth_says_what_to_do():
    with pytest.raises(SetupError) as info:
        open_link("00:0C:BF:12:34:56", channel=6)
    message = str(info.value)
    assert "socket.AF_BLUETOOTH is missing" in message
    assert "/usr/bin/python3 -m venv" in message
    assert "rfcomm bind /dev/rfcomm0 00:0C:BF:12:34:56 6" in message
    assert "\n" not in message


SYSTEM_PYTHON = "/usr/bin/python3"


def system_python_has_bluetooth() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import socket; socket.AF_BLUETOOTH"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.process
@pytest.mark.skipif(not system_python_has_bluetooth(), reason="no system Python with AF_BLUETOOTH")
def test_kernel_without_bluetooth_gives_one_clear_line():
    """The real RFCOMM socket call, on this kernel (no Bluetooth: errno 97)."""
    if shutil.which("hciconfig") or os.path.exists("/sys/class/bluetooth"):
        pytest.skip("this kernel may have Bluetooth")
    code = (
        "from wattchecker_client.errors import SetupError\nfrom wattchecker_client.transport import open_link\n"
        "try:\n"
        "    open_link('00:0C:BF:12:34:56', channel=6, timeout=1)\n"
        "except SetupError as exc:\n"
        "    print(exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert out.stdout.startswith("the kernel has no Bluetooth sockets (errno 97, EAFNOSUPPORT)"), out
    assert out.stdout.count("\n") == 1


def test_missing_channel_without_sdp_module_says_how_to_find_it():
    try:
        import bluetooth  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the optional bluetooth module is installed")
    with pytest.raises(SetupError, match=r"set the channel \(find it with `sdptool browse 00:0C:BF:12:34:56`\)"):
        find_channel("00:0C:BF:12:34:56")
