"""A meter without a configured channel, and no SDP module: its RFCOMM channel is found by probing.

Only the RFCOMM socket call is injected: each channel either refuses, or
hands over one end of a real socketpair whose other end is a scripted meter.
"""

from __future__ import annotations

import datetime as dt
import errno
import importlib.util
import logging
import os
import socket
import threading

import pytest

from wattchecker_client import protocol
from wattchecker_client.clock import Clock, FakeClock
from wattchecker_client.meter import MeterReader, ReaderSettings, links_for, probe_channel
from wattchecker_client.protocol import Measurement, encode_frame
from wattchecker_client.transport import LinkError

MAC = "00:0C:BF:12:34:56"
ACK_CLOCK = bytes.fromhex("AA 02 00 01 00 97")
ACK_START = bytes.fromhex("AA 02 00 02 00 AB")
HANDSHAKE = [ACK_CLOCK, ACK_START]
JUNK = b"\x13\x37 not a meter \x00\xff"  # another service on the device, or line noise: never a frame
NOW = dt.datetime(2026, 7, 2, 9, 24, 29)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bluetooth") is not None,
                                reason="an SDP module is importable: the channel would be looked up, not probed")


def reading(when: dt.datetime, watts: float = 181.385) -> bytes:
    return encode_frame(protocol.measurement_payload(Measurement(when, 102.931, 2311.75, watts)))


def refused(mac: str, channel: int, timeout: float) -> socket.socket:
    raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))


class Channels:
    """The injected RFCOMM call: scripted meters on some channels, refusal on the rest; every call noted."""

    def __init__(self, answering: dict) -> None:
        self.answering = {channel: list(peers) for channel, peers in answering.items()}
        self.calls = []

    def __call__(self, mac: str, channel: int, timeout: float) -> socket.socket:
        self.calls.append((mac, channel))
        if self.answering.get(channel):
            return self.answering[channel].pop(0).rfcomm_factory(mac, channel, timeout)
        return refused(mac, channel, timeout)


def test_the_first_channel_that_completes_the_handshake_is_kept_open(scripted):
    junk = scripted([JUNK] * 4)  # accepts, then answers rubbish to every request
    meter = scripted(HANDSHAKE + [reading(NOW)])
    channels = Channels({5: [junk], 7: [meter]})
    channel, link = probe_channel(MAC, FakeClock(NOW), rfcomm_factory=channels, response_timeout=0.2)
    with link:
        assert channel == 7 and link.name == f"{MAC} channel 7"
        assert channels.calls == [(MAC, c) for c in range(1, 8)]  # stops at the first meter
        set_clock = protocol.set_clock_request(NOW)[3:-1]
        assert junk.requests == [set_clock, set_clock]  # tried (twice), then given up
        assert meter.requests == [set_clock, bytes([0x02, 0x00]), b"\x08"]
        assert junk.rfcomm_factory(MAC, 5, 1.0).fileno() == -1  # its link was closed, not left hanging


def test_an_unsynchronised_host_clock_is_not_set_on_the_meter_while_probing(scripted):
    meter = scripted([ACK_START, reading(NOW)])
    clock = FakeClock(NOW)
    clock.set_synchronised(False)
    channel, link = probe_channel(MAC, clock, rfcomm_factory=Channels({1: [meter]}), response_timeout=0.2)
    link.close()
    assert channel == 1 and meter.requests == [bytes([0x02, 0x00]), b"\x08"]


def test_a_channel_answering_a_bad_reading_is_skipped(scripted):
    impossible = reading(NOW, watts=25_000.0)  # a valid frame of a value no WATT CHECKER gives
    wrong = scripted(HANDSHAKE + [impossible, impossible])
    meter = scripted(HANDSHAKE + [reading(NOW)])
    channels = Channels({2: [wrong], 3: [meter]})
    channel, link = probe_channel(MAC, FakeClock(NOW), rfcomm_factory=channels, response_timeout=0.2)
    link.close()
    assert channel == 3


def test_no_channel_at_all_is_one_link_error_naming_the_fix():
    channels = Channels({})
    with pytest.raises(LinkError) as info:
        probe_channel(MAC, FakeClock(NOW), rfcomm_factory=channels, response_timeout=0.2)
    assert str(info.value) == (
        f"{MAC}: no RFCOMM channel 1-30 answered like a WATT CHECKER (set clock, a reading): is it paired, "
        f"powered and in range? Or set its `channel:` (`sdptool browse {MAC}`)"
    )
    assert [c for _, c in channels.calls] == list(range(1, 31))


def test_a_meter_out_of_reach_stops_the_search_at_once():
    calls = []

    def unreachable(mac: str, channel: int, timeout: float) -> socket.socket:
        calls.append(channel)
        raise OSError(errno.EHOSTDOWN, os.strerror(errno.EHOSTDOWN))

    with pytest.raises(LinkError, match=f"^{MAC}: cannot reach the meter to search its RFCOMM channel: "
                                        f"{MAC} channel 1: connect failed: Host is down$"):
        probe_channel(MAC, FakeClock(NOW), rfcomm_factory=unreachable)
    assert calls == [1]  # not thirty page timeouts


class SynchronisedClock(Clock):
    """The real clock, said synchronised: the reader sets the meter at each handshake, as the script expects."""

    def synchronised(self) -> bool:
        return True


def test_the_reader_searches_once_tells_the_user_and_reconnects_on_the_found_channel(scripted, caplog):
    now = Clock().now().replace(microsecond=0)
    first = scripted(HANDSHAKE + [reading(now)]  # the search's handshake and reading
                     + HANDSHAKE + [reading(now + dt.timedelta(seconds=1))])  # the reader's own
    second = scripted(HANDSHAKE + [reading(now + dt.timedelta(seconds=2), watts=50.0)])
    channels = Channels({4: [first, second]})
    stop = threading.Event()
    settings = ReaderSettings(MAC, poll_interval=0.05, backoff=(0.01, 0.05))
    reader = MeterReader(settings, SynchronisedClock(), stop, links=links_for(settings, rfcomm_factory=channels))
    caplog.set_level(logging.INFO)
    got = []
    for measurement in reader.readings():
        got.append(measurement)
        if len(got) == 1:
            first.hang_up()  # the link drops: the reader reconnects, without a new search
        if len(got) == 2:
            break
    assert [m.watts for m in got] == [181.385, 50.0]
    assert [c for _, c in channels.calls] == [1, 2, 3, 4, 4]
    found = [r.getMessage() for r in caplog.records if "answers on RFCOMM channel" in r.getMessage()]
    assert found == [f"{MAC}: the meter answers on RFCOMM channel 4; put `channel: 4` under it in config.yaml "
                     "(or give `read --channel 4`) to skip this search"]


@pytest.mark.process
@pytest.mark.skipif(hasattr(socket, "AF_BLUETOOTH"), reason="this Python has Bluetooth sockets")
def test_read_without_bluetooth_sockets_is_one_line_that_names_no_guessed_channel():
    from .conftest import run_cli

    result = run_cli("read", MAC, "--count", "1", timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        f"or run `sudo rfcomm bind /dev/rfcomm0 {MAC} CHANNEL` and use /dev/rfcomm0 as the address")
