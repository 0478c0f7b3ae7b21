"""The sans-I/O core, byte for byte against protocol.md, plus a property test of the decoder."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattchecker_client import protocol
from wattchecker_client.protocol import (
    MAX_FRAME,
    FrameDecoder,
    Measurement,
    MeasurementError,
    crc8,
    decode_measurement,
    encode_frame,
)

from . import framing

CAPTURED = bytes.fromhex("AA 11 00 08 00 BC 6E 00 3E 9C 01 89 00 00 1E 26 0F 0F 08 13 9E")
BUILT = bytes.fromhex("AA 11 00 08 00 E0 83 04 13 92 01 B5 8D 00 1E 18 09 07 09 13 65")
ACK_SET_CLOCK = bytes.fromhex("AA 02 00 01 00 97")
ACK_START = bytes.fromhex("AA 02 00 02 00 AB")


def frames_of(data: bytes) -> list:
    decoder = FrameDecoder()
    decoder.feed(data)
    return [f.payload for f in decoder]


# --- vectors from protocol.md ------------------------------------------------------


def test_captured_measurement_decodes_exactly():
    (payload,) = frames_of(CAPTURED)
    m = decode_measurement(payload)
    assert m == Measurement(dt.datetime(2019, 8, 15, 15, 38, 30), 105.534, 221.46875, 0.685)


def test_built_measurement_decodes_and_round_trips():
    (payload,) = frames_of(BUILT)
    m = decode_measurement(payload)
    assert m == Measurement(dt.datetime(2019, 9, 7, 9, 24, 30), 102.931, 2311.75, 181.385)
    assert encode_frame(protocol.measurement_payload(m)) == BUILT


@pytest.mark.parametrize(
    "payload, crc",
    [("01 0E 3B 0D 11 08 13 05", 0xE1), ("08", 0xB3), ("01 00", 0x97)],
)
def test_published_crc_checks(payload, crc):
    data = bytes.fromhex(payload)
    assert crc8(data) == crc
    assert crc8(data + bytes((crc,))) == 0


def test_set_clock_request_matches_published_bytes():
    # 2019-08-17 13:59:14 was a Saturday: Monday=0 gives weekday 5, as published.
    frame = protocol.set_clock_request(dt.datetime(2019, 8, 17, 13, 59, 14))
    assert frame == bytes.fromhex("AA 08 00 01 0E 3B 0D 11 08 13 05 E1")


def test_request_frames_byte_exact():
    assert protocol.get_data_request() == bytes.fromhex("AA 01 00 08 B3")
    assert protocol.start_request() == bytes.fromhex("AA 02 00 02 00 AB")
    assert protocol.stop_request() == bytes.fromhex("AA 01 00 03 0A")
    assert encode_frame(protocol.ack_payload(protocol.CMD_SET_CLOCK)) == ACK_SET_CLOCK
    start_ff = protocol.start_request(0xFF)
    assert start_ff[:5] == bytes.fromhex("AA 02 00 02 FF") and crc8(start_ff[3:]) == 0


def test_start_argument_must_be_a_byte():
    with pytest.raises(ValueError):
        protocol.start_request(256)


# --- decoder -----------------------------------------------------------------------


def test_frame_split_at_every_byte():
    decoder = FrameDecoder()
    for i in range(len(CAPTURED)):
        assert decoder.next_frame() is None
        decoder.feed(CAPTURED[i : i + 1])
    assert decoder.next_frame().payload == CAPTURED[3:-1]


def test_several_frames_in_one_read_come_out_in_order():
    assert frames_of(ACK_SET_CLOCK + CAPTURED + ACK_START + BUILT) == [
        ACK_SET_CLOCK[3:-1],
        CAPTURED[3:-1],
        ACK_START[3:-1],
        BUILT[3:-1],
    ]


def test_junk_before_between_and_after_is_skipped_and_counted():
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x13junk" + CAPTURED + b"\xff\xfe" + BUILT + b"tail")
    assert [f.payload for f in decoder] == [CAPTURED[3:-1], BUILT[3:-1]]
    assert decoder.junk_bytes == 2 + 4 + 2 + 4
    assert decoder.buffered == 0


def test_bad_crc_is_dropped_counted_and_the_next_frame_survives():
    corrupted = CAPTURED[:-1] + bytes((CAPTURED[-1] ^ 0x01,))
    decoder = FrameDecoder()
    decoder.feed(corrupted + BUILT)
    assert [f.payload for f in decoder] == [BUILT[3:-1]]
    assert decoder.crc_errors == 1


def test_false_sync_with_plausible_length_does_not_hide_a_real_frame():
    # 0xAA 0x05 0x00 looks like the start of a 5-byte frame and swallows the
    # start of the real one; the CRC fails and scanning resumes inside it.
    decoder = FrameDecoder()
    decoder.feed(b"\xaa\x05\x00" + CAPTURED)
    assert [f.payload for f in decoder] == [CAPTURED[3:-1]]
    assert decoder.crc_errors >= 1


def test_absurd_length_is_rejected_at_once_without_waiting():
    decoder = FrameDecoder()
    decoder.feed(b"\xaa\xff\xff")  # would be a 65 KB frame
    assert decoder.buffered == 0 and decoder.bad_lengths == 1
    decoder.feed(b"\xaa\x00\x00")  # zero-length payload has no command byte
    assert decoder.buffered == 0 and decoder.bad_lengths == 2
    decoder.feed(BUILT)
    assert decoder.next_frame().payload == BUILT[3:-1]


def test_buffer_stays_bounded_whatever_it_is_fed():
    decoder = FrameDecoder()
    for i in range(2000):
        decoder.feed(bytes([0xAA, 0x20, 0x00]) + bytes(range(i % 200, i % 200 + 30)))
        assert decoder.buffered < MAX_FRAME
    assert decoder.peak_buffer < MAX_FRAME


def test_reset_forgets_a_partial_frame():
    decoder = FrameDecoder()
    decoder.feed(CAPTURED[:10])
    decoder.reset()
    decoder.feed(BUILT)
    assert [f.payload for f in decoder] == [BUILT[3:-1]]


# --- measurements ------------------------------------------------------------------


def payload_with(**changes: int) -> bytes:
    data = bytearray(BUILT[3:-1])
    for offset, value in changes.items():
        data[int(offset[1:])] = value
    return bytes(data)


def test_non_zero_status_is_an_error_not_data():
    with pytest.raises(MeasurementError, match="status 0x01"):
        decode_measurement(payload_with(b1=0x01))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"b15": 13}, "invalid meter date"),  # month 13
        ({"b14": 31, "b15": 2}, "invalid meter date"),  # 31 February
        ({"b13": 24}, "invalid meter date"),  # hour 24
        ({"b7": 0x03}, "impossible voltage"),  # ~199 V
        ({"b5": 0, "b6": 0, "b7": 0}, "impossible voltage"),  # 0 V
        ({"b4": 0x30}, "impossible current"),  # ~25 A
        ({"b10": 0x06}, "impossible power"),  # top byte above 5
    ],
)
def test_impossible_values_are_errors(changes, message):
    with pytest.raises(MeasurementError, match=message):
        decode_measurement(payload_with(**changes))


def test_wrong_command_or_length_is_not_a_measurement():
    with pytest.raises(MeasurementError, match="not a measurement"):
        decode_measurement(ACK_START[3:-1])
    with pytest.raises(MeasurementError, match="not a measurement"):
        decode_measurement(BUILT[3:-2])


def test_top_of_range_values_are_accepted():
    m = Measurement(dt.datetime(2030, 12, 31, 23, 59, 59), 140.0, 20000.0, 1966.08)
    assert protocol.quantize(m) == m


def test_decode_clock_reads_back_a_set_clock_request():
    when = dt.datetime(2026, 11, 27, 5, 1, 2)
    assert protocol.decode_clock(protocol.set_clock_request(when)[3:-1]) == when


# --- property: junk, corruption, stray acks, random splits ---------------------------

measurements = st.builds(
    Measurement,
    time=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)).map(
        lambda t: t.replace(microsecond=0)
    ),
    volts=st.floats(90, 110),
    milliamps=st.floats(0, 15000),
    watts=st.floats(0, 1500),
).map(protocol.quantize)

valid_frames = st.one_of(
    measurements.map(lambda m: encode_frame(protocol.measurement_payload(m))),
    st.just(ACK_START),
    st.just(ACK_SET_CLOCK),
)


stray_acks = st.sampled_from([ACK_START, ACK_SET_CLOCK])


@settings(max_examples=300, deadline=None)
@given(parts=framing.pieces(valid_frames, stray_acks), splits=framing.cuts)
def test_exactly_the_valid_frames_come_out_in_order(parts, splits):
    framing.assert_only_valid_frames_come_out(parts, splits, FrameDecoder())


@pytest.mark.parametrize("length", [0x10, 0x13, 0x15, 0x19, 0x01, 0x31, 0x91])
def test_corrupted_length_field_costs_only_that_frame(length):
    bad = bytearray(CAPTURED)
    bad[1] = length
    decoder = FrameDecoder()
    decoder.feed(bytes(bad) + BUILT + ACK_START)
    payloads = [f.payload for f in decoder]
    assert payloads[-2:] == [BUILT[3:-1], ACK_START[3:-1]]
    assert CAPTURED[3:-1] not in payloads
