"""REX-BTWATTCH1 (Bluetooth Classic, SPP): its commands and its 17-byte measurement, sans I/O.

Frames are little-endian-length ``AA`` frames (see ``frames``). Nothing here
touches a socket or reads the clock. See ``shared/protocol.md`` for the facts.
"""

from __future__ import annotations

import datetime as dt

from .frames import (
    Dialect,
    Limits,
    Measurement,
    MeasurementError,
    ProtocolError,
    Reading,
    check_measurement_shape,
    encode_frame,
)

CMD_SET_CLOCK = 0x01
CMD_START = 0x02
CMD_STOP = 0x03
CMD_GET_DATA = 0x08

MEASUREMENT_PAYLOAD_SIZE = 17


def set_clock_request(when: dt.datetime) -> bytes:
    """Command 0x01 for a naive UTC datetime (the device keeps whatever we give it).

    The weekday byte is Monday=0, as Python counts; the device ignores it.
    """
    payload = bytes(
        (
            CMD_SET_CLOCK,
            when.second,
            when.minute,
            when.hour,
            when.day,
            when.month,
            when.year % 100,
            when.weekday(),
        )
    )
    return encode_frame(payload)


def start_request(argument: int = 0x00) -> bytes:
    """Command 0x02; 0x00 is the original client's argument (0xFF: high-speed test mode)."""
    if not 0 <= argument <= 0xFF:
        raise ValueError(f"start argument {argument} is not a byte")
    return encode_frame(bytes((CMD_START, argument)))


def stop_request() -> bytes:
    return encode_frame(bytes((CMD_STOP,)))


def get_data_request() -> bytes:
    return encode_frame(bytes((CMD_GET_DATA,)))


# --- measurements -------------------------------------------------------------

# Physically possible readings for a 100 V / 15 A plug meter. Readings outside
# these are corruption that slipped past the CRC, not data. Power above
# 1966.08 W (top byte > 5) is what another client already treats as garbage.
VOLTS_RANGE = (50.0, 140.0)
MILLIAMPS_MAX = 20_000.0
WATTS_MAX = 1966.08
LIMITS = Limits(VOLTS_RANGE, MILLIAMPS_MAX, WATTS_MAX, "5-7", "2-4", "8-10")


def _u24(data: bytes, offset: int) -> int:
    return data[offset] | (data[offset + 1] << 8) | (data[offset + 2] << 16)


def decode_measurement(payload: bytes) -> Measurement:
    """Decode a 0x08 response payload; raise MeasurementError if it is not trustworthy."""
    check_measurement_shape(payload, CMD_GET_DATA, MEASUREMENT_PAYLOAD_SIZE)
    milliamps = _u24(payload, 2) / 128
    volts = _u24(payload, 5) / 1000
    watts = _u24(payload, 8) * 5 / 1000
    second, minute, hour, day, month, year = payload[11:17]
    try:
        when = dt.datetime(2000 + year, month, day, hour, minute, second)
    except ValueError as exc:
        raise MeasurementError(
            f"invalid meter date {2000 + year:04d}-{month:02d}-{day:02d} "
            f"{hour:02d}:{minute:02d}:{second:02d} (payload bytes 11-16): {exc}"
        ) from None
    measurement = Measurement(when, volts, milliamps, watts)
    LIMITS.check(measurement)
    return measurement


def _u24_bytes(value: int) -> bytes:
    return bytes((value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFF))


def measurement_payload(m: Measurement, status: int = 0) -> bytes:
    """Encode a measurement as the device would; values round to the wire's resolution."""
    t = m.time
    return (
        bytes((CMD_GET_DATA, status))
        + _u24_bytes(round(m.milliamps * 128))
        + _u24_bytes(round(m.volts * 1000))
        + _u24_bytes(round(m.watts * 200))
        + bytes((t.second, t.minute, t.hour, t.day, t.month, t.year - 2000))
    )


def quantize(m: Measurement) -> Measurement:
    """The measurement exactly as it reads back after a trip over the wire."""
    return decode_measurement(measurement_payload(m))


def decode_clock(payload: bytes) -> dt.datetime:
    """The datetime in a 0x01 request payload (used by the simulated meter)."""
    if len(payload) != 8 or payload[0] != CMD_SET_CLOCK:
        raise ProtocolError(f"not a set-clock request: {payload.hex(' ')}")
    _, second, minute, hour, day, month, year = payload[:7]
    try:
        return dt.datetime(2000 + year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ProtocolError(f"set-clock request with invalid date: {exc}") from None


DIALECT = Dialect(
    model="btwattch1",
    product="REX-BTWATTCH1",
    big_endian=False,
    measurement_size=MEASUREMENT_PAYLOAD_SIZE,
    set_clock_request=set_clock_request,
    decode_clock=decode_clock,
    get_data_request=get_data_request,
    decode_reading=lambda payload: Reading(decode_measurement(payload)),
    measurement_payload=lambda m, relay: measurement_payload(m),
    start_request=start_request,
    stop_request=stop_request,
)
