"""The simulated meter: its protocol, its load, its faults, and its pty and TCP servers."""

from __future__ import annotations

import datetime as dt
import os
import threading

import pytest

from wattchecker_client import protocol
from wattchecker_client.clock import Clock, FakeClock
from wattchecker_client.errors import SetupError
from wattchecker_client.meter import MeterReader, ReaderSettings
from wattchecker_client.protocol import FrameDecoder, decode_measurement
from wattchecker_client.simulator import (
    PtyServer,
    SimOptions,
    SimulatedMeter,
    TcpServer,
    air_conditioner,
    parse_sim_address,
)

T0 = dt.datetime(2026, 7, 1, 0, 0, 0)
GET = bytes([protocol.CMD_GET_DATA])


def frames(data: bytes):
    decoder = FrameDecoder()
    decoder.feed(data)
    return [f.payload for f in decoder], decoder


def test_options_from_a_sim_address():
    opts = parse_sim_address("sim://?clock_speed=60&corrupt-rate=0.5&split_writes=yes&drop_after=3")
    assert opts == SimOptions(clock_speed=60.0, corrupt_rate=0.5, split_writes=True, drop_after=3)
    assert parse_sim_address("sim://") == SimOptions()


@pytest.mark.parametrize(
    "address, message",
    [
        ("sim://?speed=2", "unknown simulator option 'speed'; known: seed, model, clock_speed"),
        ("sim://?drop_after=x", "drop_after='x' is not a whole number"),
        ("sim://?corrupt_rate=2", "corrupt_rate must be between 0 and 1"),
        ("sim://?split_writes=maybe", "split_writes='maybe' is not true or false"),
        ("sim://host", "must look like sim://"),
    ],
)
def test_bad_sim_options_are_named(address, message):
    with pytest.raises(SetupError, match=message):
        parse_sim_address(address)


def test_air_conditioner_day_is_plausible_and_deterministic():
    day = [air_conditioner(T0 + dt.timedelta(seconds=s)) for s in range(0, 86400, 7)]
    assert all(protocol.quantize(m) == m for m in day)  # decodes within every limit
    night = [m.watts for m in day if 15 <= m.time.hour < 22]
    daytime = [m.watts for m in day if not 15 <= m.time.hour < 22]
    assert max(night) < 1.0
    assert max(daytime) > 600 and min(daytime) < 30  # the compressor cycles
    assert all(95 < m.volts < 105 for m in day)
    assert air_conditioner(T0, seed=3) == air_conditioner(T0, seed=3)
    assert air_conditioner(T0 + dt.timedelta(hours=3), seed=3) != air_conditioner(
        T0 + dt.timedelta(hours=3), seed=4
    )


def test_meter_keeps_the_clock_it_is_given_running_fast():
    clock = FakeClock(dt.datetime(2026, 1, 1))
    meter = SimulatedMeter(SimOptions(clock_speed=60), clock)
    (ack,), _ = frames(meter.respond(protocol.set_clock_request(T0)[3:-1]))
    assert ack == b"\x01\x00"
    clock.advance(2.5)
    (payload,), _ = frames(meter.respond(GET))
    assert decode_measurement(payload) == air_conditioner(T0 + dt.timedelta(seconds=150))


@pytest.mark.parametrize("offset", [3600, -90])
def test_a_meter_clock_can_start_off_the_hosts(offset):
    clock = FakeClock(dt.datetime(2026, 1, 1))
    meter = SimulatedMeter(parse_sim_address(f"sim://?clock_offset={offset}"), clock)
    clock.advance(2)
    assert meter.now() == dt.datetime(2026, 1, 1) + dt.timedelta(seconds=offset + 2)


def test_meter_acknowledges_start_and_stop():
    meter = SimulatedMeter(SimOptions(), FakeClock())
    assert meter.respond(bytes([0x02, 0x00])) == bytes.fromhex("AA 02 00 02 00 AB")
    assert meter.measuring
    assert frames(meter.respond(bytes([0x03])))[0] == [b"\x03\x00"]
    assert not meter.measuring


@pytest.mark.parametrize(
    "option, check",
    [
        ("corrupt_rate", lambda out, dec: dec.crc_errors + dec.bad_lengths >= 1 or len(out) == 0),
        ("stray_ack_rate", lambda out, dec: out[0] == b"\x02\x00" and out[1][0] == 0x08),
        ("bad_status_rate", lambda out, dec: out[0][:2] == b"\x08\x01"),
        ("junk_rate", lambda out, dec: dec.junk_bytes >= 1 and out[-1][0] == 0x08),
    ],
)
def test_each_fault_shows_on_every_response_at_rate_one(option, check):
    meter = SimulatedMeter(SimOptions(**{option: 1.0}, seed=9), FakeClock())
    for _ in range(50):
        out, decoder = frames(meter.respond(GET))
        assert check(out, decoder)


def test_corrupted_responses_never_decode_as_a_measurement():
    meter = SimulatedMeter(SimOptions(corrupt_rate=1.0), FakeClock())
    for _ in range(200):
        payloads, _ = frames(meter.respond(GET))
        for payload in payloads:
            with pytest.raises(protocol.MeasurementError):
                decode_measurement(payload)


def test_split_writes_cover_the_response_exactly():
    meter = SimulatedMeter(SimOptions(split_writes=True), FakeClock())
    response = meter.respond(GET)
    chunks = meter.chunks(response)
    assert len(chunks) >= 2 and b"".join(chunks) == response


def read_some(address: str, count: int, **kwargs) -> list:
    stop = threading.Event()
    reader = MeterReader(ReaderSettings(address, poll_interval=0.05, backoff=(0.05, 0.2), **kwargs), Clock(), stop)
    got = []
    for m in reader.readings():
        got.append(m)
        if len(got) == count:
            break
    return got, reader.stats


def test_tcp_server_serves_a_reader():
    server = TcpServer(SimulatedMeter(SimOptions(clock_speed=20), Clock()))
    server.start()
    try:
        got, stats = read_some(server.address, 5)
    finally:
        server.close()
    assert len(got) == 5 and stats.connects == 1
    assert all(m == air_conditioner(m.time) for m in got)


def test_pty_server_drops_and_comes_back_behind_the_same_symlink(tmp_path):
    link_path = str(tmp_path / "rfcomm0")
    server = PtyServer(SimulatedMeter(SimOptions(clock_speed=20, drop_after=5), Clock()), link_path)
    first_tty = os.readlink(link_path)
    server.start()
    try:
        got, stats = read_some(link_path, 12)
        assert os.readlink(link_path) != first_tty or stats.connects > 1
    finally:
        server.close()
    assert stats.connects >= 3 and stats.link_errors >= 2
    assert all(m == air_conditioner(m.time) for m in got)
    assert not os.path.lexists(link_path)


def test_a_fast_clock_never_goes_back_but_a_real_time_one_does():
    clock = FakeClock(dt.datetime(2026, 1, 1))
    fast = SimulatedMeter(SimOptions(clock_speed=60), clock)
    real = SimulatedMeter(SimOptions(), clock)
    clock.advance(10)
    earlier = protocol.set_clock_request(dt.datetime(2026, 1, 1))[3:-1]
    fast.respond(earlier)
    real.respond(earlier)
    assert fast.now() == dt.datetime(2026, 1, 1, 0, 10)  # 10 s at 60x, kept
    assert real.now() == dt.datetime(2026, 1, 1)
    later = protocol.set_clock_request(dt.datetime(2026, 1, 2))[3:-1]
    fast.respond(later)
    assert fast.now() == dt.datetime(2026, 1, 2)
