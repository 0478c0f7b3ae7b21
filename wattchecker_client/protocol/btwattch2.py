"""RS-BTWATTCH2 (Bluetooth LE, with a relay): its commands, 27-byte measurement and advertisement, sans I/O.

Frames are the BTWATTCH1's with a big-endian length. Measurements carry
48-bit little-endian fixed-point fields; two published decoders read them
through 32-bit arithmetic and break above ~128 V, ~128 W or ~2 A, so every
field here is handled as a Python int over its whole 48-bit range. See
``shared/protocol.md`` (second half) for the facts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Optional

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
CMD_GET_DATA = 0x08
CMD_RELAY = 0xA7
CMD_IDENTIFY = 0x3E
# 0x3E's arguments as every client sends them; what each byte means is not documented.
IDENTIFY_ARGUMENTS = bytes((0x01, 0x02, 0x02, 0x0F))

MEASUREMENT_PAYLOAD_SIZE = 27
FIELD_BYTES = 6
FIELD_MAX = (1 << 48) - 1
# Raw field = value * scale: V and W in units of 2^-24, A in units of 2^-30.
VOLT_SCALE = 1 << 24
AMP_SCALE = 1 << 30
WATT_SCALE = 1 << 24

# Physically possible readings at a Japanese 100 V outlet. The relay is rated
# 15 A / 1500 W, but an overload reads honestly until something trips, and a
# household branch breaker is 20 A: 20 A at the 140 V voltage ceiling is the
# most any real load can show. Above these, the frame is corrupt, not data.
VOLTS_RANGE = (50.0, 140.0)
MILLIAMPS_MAX = 20_000.0
WATTS_MAX = 2_800.0
LIMITS = Limits(VOLTS_RANGE, MILLIAMPS_MAX, WATTS_MAX, "2-7", "8-13", "14-19")


def _big(payload: bytes) -> bytes:
    return encode_frame(payload, big_endian=True)


# --- requests and their acknowledgements -----------------------------------------


def set_clock_request(when: dt.datetime) -> bytes:
    """Command 0x01 for a naive UTC datetime: month 0-11, year - 1900, weekday with Sunday = 0."""
    if not 1900 <= when.year <= 1900 + 255:
        raise ValueError(f"year {when.year} does not fit the meter's clock (1900-2155)")
    sunday_first = (when.weekday() + 1) % 7
    return _big(
        bytes(
            (CMD_SET_CLOCK, when.second, when.minute, when.hour, when.day, when.month - 1, when.year - 1900,
             sunday_first)
        )
    )


def decode_clock(payload: bytes) -> dt.datetime:
    """The datetime in a 0x01 request payload (used by the simulated meter)."""
    if len(payload) != 8 or payload[0] != CMD_SET_CLOCK:
        raise ProtocolError(f"not a set-clock request: {payload.hex(' ')}")
    return _clock(payload[1:7], ProtocolError, "set-clock request bytes 1-6")


def get_data_request() -> bytes:
    """Command 0x08, the realtime measurement."""
    return _big(bytes((CMD_GET_DATA,)))


def relay_request(on: bool) -> bytes:
    """Command 0xA7: switch the relay (and the load plugged into the meter) on or off."""
    return _big(bytes((CMD_RELAY, 1 if on else 0)))


def identify_request() -> bytes:
    """Command 0x3E: blink the LED, the simplest way to tell plugs apart. Its answer is not documented."""
    return _big(bytes((CMD_IDENTIFY,)) + IDENTIFY_ARGUMENTS)


def relay_ack_payload(state: bool, status: int = 0) -> bytes:
    """The response payload to 0xA7: ``A7 status state`` (used by the simulated meter)."""
    return bytes((CMD_RELAY, status, 1 if state else 0))


def decode_relay_ack(payload: bytes) -> bool:
    """The relay state the meter acknowledged; ProtocolError if it refused or the answer is odd."""
    if len(payload) != 3 or payload[0] != CMD_RELAY:
        raise ProtocolError(f"not a relay acknowledgement: {payload.hex(' ')}")
    if payload[1] != 0:
        raise ProtocolError(f"meter refused the relay command: status 0x{payload[1]:02X} (byte 1 of payload)")
    if payload[2] not in (0, 1):
        raise ProtocolError(f"relay acknowledgement with unknown state 0x{payload[2]:02X} (byte 2 of payload)")
    return payload[2] == 1


# --- the measurement -------------------------------------------------------------


def _u48(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + FIELD_BYTES], "little")


def _u48_bytes(value: int, what: str) -> bytes:
    if not 0 <= value <= FIELD_MAX:
        raise ValueError(f"{what} does not fit a 48-bit field")
    return value.to_bytes(FIELD_BYTES, "little")


def _clock(fields: bytes, error: type, where: str) -> dt.datetime:
    second, minute, hour, day, month, year = fields
    try:
        return dt.datetime(1900 + year, month + 1, day, hour, minute, second)
    except ValueError as exc:
        raise error(
            f"invalid meter date {1900 + year:04d}-{month + 1:02d}-{day:02d} "
            f"{hour:02d}:{minute:02d}:{second:02d} ({where}): {exc}"
        ) from None


def decode_fields(payload: bytes) -> Reading:
    """Decode a 0x08 response payload exactly, without judging whether the values are possible.

    Each field divides a whole 48-bit int by a power of two (mA: the int times
    1000 first), which Python rounds once, correctly: no wrap, no sign, at any
    value. MeasurementError only for a wrong shape, a bad status or a bad date.
    """
    check_measurement_shape(payload, CMD_GET_DATA, MEASUREMENT_PAYLOAD_SIZE)
    volts = _u48(payload, 2) / VOLT_SCALE
    milliamps = _u48(payload, 8) * 1000 / AMP_SCALE
    watts = _u48(payload, 14) / WATT_SCALE
    when = _clock(payload[20:26], MeasurementError, "payload bytes 20-25")
    # One client reads byte 26 as the relay (1 = on); another value is unknown, not an error.
    relay = {0: False, 1: True}.get(payload[26])
    return Reading(Measurement(when, volts, milliamps, watts), relay)


def decode_reading(payload: bytes) -> Reading:
    """Decode a 0x08 response payload; raise MeasurementError if it is not trustworthy."""
    reading = decode_fields(payload)
    LIMITS.check(reading.measurement)
    return reading


def decode_measurement(payload: bytes) -> Measurement:
    """Like ``decode_reading``, without the relay state."""
    return decode_reading(payload).measurement


def raw_fields(m: Measurement) -> tuple:
    """(voltage, current, power) as the meter's 48-bit ints, rounded to the nearest step."""
    from fractions import Fraction  # exact rounding; only the simulator and tests encode

    return (
        round(Fraction(m.volts) * VOLT_SCALE),
        round(Fraction(m.milliamps) * AMP_SCALE / 1000),
        round(Fraction(m.watts) * WATT_SCALE),
    )


def measurement_payload(m: Measurement, relay: bool = True, status: int = 0) -> bytes:
    """Encode a measurement as the device would; values round to the wire's resolution."""
    volts, amps, watts = raw_fields(m)
    t = m.time
    if not 1900 <= t.year <= 1900 + 255:
        raise ValueError(f"year {t.year} does not fit the meter's clock (1900-2155)")
    return (
        bytes((CMD_GET_DATA, status))
        + _u48_bytes(volts, f"{m.volts} V")
        + _u48_bytes(amps, f"{m.milliamps} mA")
        + _u48_bytes(watts, f"{m.watts} W")
        + bytes((t.second, t.minute, t.hour, t.day, t.month - 1, t.year - 1900, 1 if relay else 0))
    )


def quantize(m: Measurement) -> Measurement:
    """The measurement exactly as it reads back after a trip over the wire."""
    return decode_measurement(measurement_payload(m))


# --- advertisements ----------------------------------------------------------------

MANUFACTURER_ID = 0x0B60
ADVERTISEMENT_SIZE = 8


@dataclass(frozen=True)
class Advertisement:
    """What a BTWATTCH2 broadcasts without a connection (updated only about every 30 s).

    ``relay`` is None for a state byte other than 0 or 1.
    """

    relay: Optional[bool]
    volts: float
    milliamps: float
    watts: float


def decode_advertisement(data: bytes) -> Advertisement:
    """Decode manufacturer data 0x0B60 (the bytes after the company id, as bleak gives them).

    Layout: relay (1 = on), voltage x 10 (u16 LE), current in mA (u16 LE), power in mW (u24 LE).
    """
    if len(data) != ADVERTISEMENT_SIZE:
        raise ProtocolError(
            f"BTWATTCH2 advertisement must be {ADVERTISEMENT_SIZE} bytes, got {len(data)}: {bytes(data).hex(' ')}"
        )
    return Advertisement(
        relay={0: False, 1: True}.get(data[0]),
        volts=int.from_bytes(data[1:3], "little") / 10,
        milliamps=float(int.from_bytes(data[3:5], "little")),
        watts=int.from_bytes(data[5:8], "little") / 1000,
    )


def encode_advertisement(ad: Advertisement) -> bytes:
    """The manufacturer data a meter in this state would broadcast (for the simulator and tests)."""
    fields = ((round(ad.volts * 10), 2, "volts"), (round(ad.milliamps), 2, "milliamps"),
              (round(ad.watts * 1000), 3, "watts"))
    out = bytes((1 if ad.relay else 0,))
    for value, size, name in fields:
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"advertisement {name} {getattr(ad, name)} does not fit {size} bytes")
        out += value.to_bytes(size, "little")
    return out


DIALECT = Dialect(
    model="btwattch2",
    product="RS-BTWATTCH2",
    big_endian=True,
    measurement_size=MEASUREMENT_PAYLOAD_SIZE,
    set_clock_request=set_clock_request,
    decode_clock=decode_clock,
    get_data_request=get_data_request,
    decode_reading=decode_reading,
    measurement_payload=lambda m, relay: measurement_payload(m, relay),
    relay_request=relay_request,
    decode_relay_ack=decode_relay_ack,
    identify_request=identify_request,
)
