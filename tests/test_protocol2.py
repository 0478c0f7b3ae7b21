"""The RS-BTWATTCH2 protocol, byte for byte against protocol.md, and over the whole 48-bit range."""

from __future__ import annotations

import datetime as dt
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattchecker_client import protocol
from wattchecker_client.protocol import (
    Advertisement,
    FrameDecoder,
    Measurement,
    MeasurementError,
    ProtocolError,
    Reading,
    btwattch2,
    crc8,
    decode_advertisement,
    encode_advertisement,
    encode_frame,
)

from . import framing

# protocol.md lists this vector with one more byte (0x31) after the CRC (0x30):
# 3 header bytes + 27 payload bytes + 1 CRC byte is 31 bytes, so the 32nd
# belongs to no frame. It is kept here, and must come out as one junk byte.
MEASUREMENT_AS_LISTED = bytes.fromhex(
    "AA 00 1B 08 00 00 00 80 64 00 00 00 00 00 10 00 00 00 00 20 19 00 00 1E 18 09 02 06 7E 01 30 31"
)
MEASUREMENT = MEASUREMENT_AS_LISTED[:31]
MEASURED = Measurement(dt.datetime(2026, 7, 2, 9, 24, 30), 100.5, 250.0, 25.125)
SET_CLOCK = bytes.fromhex("AA 00 08 01 1E 18 09 02 06 7E 04 A4")
CLOCK_ACK = bytes.fromhex("AA 00 02 01 00 97")
RELAY_ON = bytes.fromhex("AA 00 02 A7 01 59")
RELAY_OFF = bytes.fromhex("AA 00 02 A7 00 DC")
RELAY_ACK_ON = bytes.fromhex("AA 00 03 A7 00 01 41")
T = dt.datetime(2026, 7, 2, 9, 24, 30)  # a Thursday


def frames_of(data: bytes, big_endian: bool = True) -> list:
    decoder = FrameDecoder(big_endian=big_endian)
    decoder.feed(data)
    return [f.payload for f in decoder]


# --- vectors from protocol.md --------------------------------------------------------


def test_realtime_request():
    assert btwattch2.get_data_request() == bytes.fromhex("AA 00 01 08 B3")


def test_measurement_vector_decodes_exactly_and_its_stray_last_byte_is_junk():
    decoder = FrameDecoder(big_endian=True)
    decoder.feed(MEASUREMENT_AS_LISTED)
    (frame,) = list(decoder)
    assert decoder.junk_bytes == 1 and decoder.buffered == 0 and decoder.crc_errors == 0
    assert crc8(frame.payload) == 0x30
    assert btwattch2.decode_reading(frame.payload) == Reading(MEASURED, relay=True)
    assert MEASURED.milliamps / 1000 == 0.25


def test_measurement_vector_encodes_byte_for_byte():
    assert encode_frame(btwattch2.measurement_payload(MEASURED, relay=True), big_endian=True) == MEASUREMENT
    assert btwattch2.DIALECT.encode_frame(btwattch2.DIALECT.measurement_payload(MEASURED, True)) == MEASUREMENT


def test_set_clock_vector_with_sunday_first_weekday():
    assert btwattch2.set_clock_request(T) == SET_CLOCK
    assert btwattch2.decode_clock(SET_CLOCK[3:-1]) == T


@pytest.mark.parametrize("day, weekday", [(5, 0), (6, 1), (11, 6)])  # 2026-07-05 was a Sunday
def test_weekday_counts_from_sunday(day, weekday):
    frame = btwattch2.set_clock_request(dt.datetime(2026, 7, day))
    assert frame[10] == weekday and crc8(frame[3:]) == 0


def test_clock_acknowledgement_vector():
    assert frames_of(CLOCK_ACK) == [b"\x01\x00"]
    assert btwattch2.DIALECT.encode_frame(protocol.ack_payload(btwattch2.CMD_SET_CLOCK)) == CLOCK_ACK


def test_relay_vectors():
    assert btwattch2.relay_request(True) == RELAY_ON
    assert btwattch2.relay_request(False) == RELAY_OFF
    (ack,) = frames_of(RELAY_ACK_ON)
    assert btwattch2.decode_relay_ack(ack) is True
    assert btwattch2.DIALECT.encode_frame(btwattch2.relay_ack_payload(True)) == RELAY_ACK_ON
    assert btwattch2.decode_relay_ack(btwattch2.relay_ack_payload(False)) is False


@pytest.mark.parametrize(
    "payload, message",
    [
        ("A7 01 01", "refused the relay command: status 0x01"),
        ("A7 00 07", "unknown state 0x07"),
        ("A7 00", "not a relay acknowledgement"),
        ("01 00 01", "not a relay acknowledgement"),
    ],
)
def test_odd_relay_acknowledgements_are_errors(payload, message):
    with pytest.raises(ProtocolError, match=message):
        btwattch2.decode_relay_ack(bytes.fromhex(payload))


def test_each_model_frames_only_its_own_length_order():
    stream = MEASUREMENT + RELAY_ACK_ON + CLOCK_ACK
    assert frames_of(stream, big_endian=False) == []
    assert len(frames_of(stream, big_endian=True)) == 3
    btwattch1_ack = bytes.fromhex("AA 02 00 02 00 AB")
    assert frames_of(btwattch1_ack, big_endian=True) == []


# --- measurement checks ------------------------------------------------------------------


def payload_with(**changes: int) -> bytes:
    data = bytearray(MEASUREMENT[3:-1])
    for offset, value in changes.items():
        data[int(offset[1:])] = value
    return bytes(data)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"b1": 0x02}, "status 0x02"),
        ({"b24": 12}, "invalid meter date 2026-13-02"),  # month byte 12 is month 13
        ({"b23": 31, "b24": 1}, "invalid meter date"),  # 31 February
        ({"b22": 24}, "invalid meter date"),  # hour 24
        ({"b5": 0x8C}, "impossible voltage 140.5 V"),
        ({"b5": 0x20}, "impossible voltage 32.5 V"),
        ({"b12": 0x05}, "impossible current 20250.0 mA"),  # 5 * 2^32 + 2^28 raw: 20.25 A
        ({"b17": 0xF0, "b18": 0x0A}, "impossible power"),  # 0x0AF0 + 0.125: 2800.125 W
    ],
)
def test_impossible_values_are_errors(changes, message):
    with pytest.raises(MeasurementError, match=message):
        btwattch2.decode_reading(payload_with(**changes))


def test_wrong_shape_is_not_a_measurement():
    with pytest.raises(MeasurementError, match="not a measurement"):
        btwattch2.decode_reading(MEASUREMENT[3:-2])
    with pytest.raises(MeasurementError, match="not a measurement"):
        btwattch2.decode_reading(b"\x01\x00")


def test_unknown_relay_byte_is_no_state_not_an_error():
    assert btwattch2.decode_reading(payload_with(b26=0)).relay is False
    assert btwattch2.decode_reading(payload_with(b26=9)) == Reading(MEASURED, relay=None)


@pytest.mark.parametrize(
    "volts, milliamps, watts",
    [
        (128.0, 2000.0, 128.0),  # exactly 2^31 raw: a signed 32-bit read turns these negative
        (139.99, 15_000.0, 1_500.0),  # the relay's rating
        (140.0, 20_000.0, 2_800.0),  # the ceilings themselves
        (101.3, 18_500.25, 1_974.6),  # an overload above the BTWATTCH1's power ceiling
        (50.0, 0.0, 0.0),
    ],
)
def test_top_of_the_honest_range_is_accepted(volts, milliamps, watts):
    m = btwattch2.quantize(Measurement(T, volts, milliamps, watts))
    assert (m.volts, m.milliamps, m.watts) == pytest.approx((volts, milliamps, watts), abs=1e-6)
    assert btwattch2.DIALECT.quantize(m) == m


def test_dialects_by_model_name():
    assert protocol.dialect("btwattch2") is btwattch2.DIALECT
    assert protocol.dialect("btwattch2").has_relay and not protocol.dialect("btwattch1").has_relay
    assert protocol.MODELS == ("btwattch1", "btwattch2")
    with pytest.raises(ValueError, match="unknown meter model 'btwattch3'; known: btwattch1, btwattch2"):
        protocol.dialect("btwattch3")


# --- the whole 48-bit range --------------------------------------------------------------

fields48 = st.integers(0, btwattch2.FIELD_MAX)
# Where other clients break: 2^31 raw and above is 128 V, 2 A, 128 W.
above_wrap = st.integers(1 << 31, btwattch2.FIELD_MAX)
times = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2155, 12, 31, 23, 59, 59)).map(
    lambda t: t.replace(microsecond=0)
)


def raw_payload(volts: int, amps: int, watts: int, when: dt.datetime, relay: int) -> bytes:
    """A measurement payload built from raw ints, independently of the encoder under test."""
    clock = bytes((when.second, when.minute, when.hour, when.day, when.month - 1, when.year - 1900))
    return (
        b"\x08\x00"
        + volts.to_bytes(6, "little")
        + amps.to_bytes(6, "little")
        + watts.to_bytes(6, "little")
        + clock
        + bytes((relay,))
    )


def half_ulp(x: float) -> Fraction:
    return Fraction(math.ulp(x)) / 2


@settings(max_examples=500, deadline=None)
@given(
    volts=st.one_of(fields48, above_wrap),
    amps=st.one_of(fields48, above_wrap),
    watts=st.one_of(fields48, above_wrap),
    when=times,
    relay=st.sampled_from([0, 1]),
)
def test_every_48_bit_value_decodes_exactly_and_round_trips(volts, amps, watts, when, relay):
    payload = raw_payload(volts, amps, watts, when, relay)
    reading = btwattch2.decode_fields(payload)
    m = reading.measurement
    # V and W are exact (48 bits fit a double); mA is the nearest double to the true value.
    assert Fraction(m.volts) == Fraction(volts, 1 << 24)
    assert Fraction(m.watts) == Fraction(watts, 1 << 24)
    assert abs(Fraction(m.milliamps) - Fraction(amps * 1000, 1 << 30)) <= half_ulp(m.milliamps)
    assert m.volts >= 0 and m.milliamps >= 0 and m.watts >= 0  # nothing wraps negative
    assert m.time == when and reading.relay is (relay == 1)
    assert btwattch2.raw_fields(m) == (volts, amps, watts)
    assert btwattch2.measurement_payload(m, relay=bool(relay)) == payload
    plausible = 50 <= m.volts <= 140 and m.milliamps <= 20_000 and m.watts <= 2_800
    if plausible:
        assert btwattch2.decode_reading(payload) == reading
    else:
        with pytest.raises(MeasurementError, match="impossible"):
            btwattch2.decode_reading(payload)


@settings(max_examples=300, deadline=None)
@given(
    volts=st.floats(128.0, 140.0),
    milliamps=st.floats(2000.0, 20_000.0),
    watts=st.floats(128.0, 2_800.0),
    when=times,
)
def test_values_above_128_v_2_a_128_w_survive_the_wire(volts, milliamps, watts, when):
    m = btwattch2.quantize(Measurement(when, volts, milliamps, watts))
    assert abs(m.volts - volts) <= 2**-25 and abs(m.watts - watts) <= 2**-25
    assert abs(m.milliamps - milliamps) <= 1000 * 2**-31 + 1e-9
    assert btwattch2.quantize(m) == m


# --- the decoder on a BTWATTCH2 stream: junk, corruption, random splits --------------------

measurements = st.builds(
    Measurement,
    time=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)).map(
        lambda t: t.replace(microsecond=0)
    ),
    volts=st.floats(90, 140),
    milliamps=st.floats(0, 20_000),
    watts=st.floats(0, 2_800),
).map(btwattch2.quantize)
valid_frames = st.one_of(
    st.tuples(measurements, st.booleans()).map(
        lambda mr: encode_frame(btwattch2.measurement_payload(*mr), big_endian=True)
    ),
    st.sampled_from([CLOCK_ACK, RELAY_ACK_ON]),
)


@settings(max_examples=300, deadline=None)
@given(parts=framing.pieces(valid_frames), splits=framing.cuts)
def test_exactly_the_valid_frames_come_out_in_order(parts, splits):
    framing.assert_only_valid_frames_come_out(parts, splits, FrameDecoder(big_endian=True))


def test_notifications_split_at_20_bytes_reassemble():
    decoder = FrameDecoder(big_endian=True)
    stream = MEASUREMENT * 3
    for i in range(0, len(stream), 20):
        decoder.feed(stream[i : i + 20])
    assert [f.payload for f in decoder] == [MEASUREMENT[3:-1]] * 3


# --- advertisements -----------------------------------------------------------------------

# relay on, 100.5 V (1005), 250 mA, 25.125 W (25125 mW), little-endian
ADVERTISED = bytes.fromhex("01 ED 03 FA 00 25 62 00")


def test_advertisement_decodes_and_encodes():
    ad = decode_advertisement(ADVERTISED)
    assert ad == Advertisement(relay=True, volts=100.5, milliamps=250.0, watts=25.125)
    assert encode_advertisement(ad) == ADVERTISED
    assert protocol.MANUFACTURER_ID == 0x0B60


def test_advertisement_top_of_range_and_odd_bytes():
    top = bytes.fromhex("00 FF FF FF FF FF FF FF")
    assert decode_advertisement(top) == Advertisement(False, 6553.5, 65535.0, 16777.215)
    assert decode_advertisement(b"\x05" + ADVERTISED[1:]).relay is None
    with pytest.raises(ProtocolError, match="must be 8 bytes, got 7"):
        decode_advertisement(ADVERTISED[:7])
    with pytest.raises(ValueError, match="does not fit"):
        encode_advertisement(Advertisement(True, 100.0, 70_000.0, 1.0))
