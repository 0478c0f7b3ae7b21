"""REX-BTWATTCH1 wire protocol, sans I/O: CRC-8, frames, the stream decoder, measurements.

Nothing here touches a socket or reads the clock: bytes and datetimes go in,
bytes, frames and values come out. See ``shared/protocol.md`` for the facts.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass
from typing import Deque, Iterator, Optional

import crcmod

SYNC = 0xAA
HEADER_SIZE = 3  # 0xAA + 2-byte little-endian length
# The largest known payload is the 17-byte measurement; leave room for
# unknown commands, but refuse lengths that would make us wait for data
# that will never come.
MAX_PAYLOAD = 32
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + 1

CMD_SET_CLOCK = 0x01
CMD_START = 0x02
CMD_STOP = 0x03
CMD_GET_DATA = 0x08

MEASUREMENT_PAYLOAD_SIZE = 17

crc8 = crcmod.mkCrcFun(0x185, initCrc=0, rev=False)


class ProtocolError(Exception):
    """A response that is well framed but carries no usable data."""


class MeasurementError(ProtocolError):
    """A measurement frame whose status or values cannot be trusted."""


# --- encoding -------------------------------------------------------------


def encode_frame(payload: bytes) -> bytes:
    """Wrap a payload (command byte first) as ``AA len_lo len_hi payload crc``."""
    if not 1 <= len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"payload length {len(payload)} outside 1..{MAX_PAYLOAD}")
    return bytes((SYNC, len(payload) & 0xFF, len(payload) >> 8)) + payload + bytes((crc8(payload),))


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


def ack_payload(command: int, status: int = 0) -> bytes:
    """The 2-byte response payload to 0x01, 0x02 and 0x03."""
    return bytes((command, status))


# --- the stream decoder -----------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One CRC-checked frame; ``payload[0]`` is the command byte."""

    payload: bytes

    @property
    def command(self) -> int:
        return self.payload[0]

    @property
    def status(self) -> Optional[int]:
        """The response status byte (0 = OK), or None if the payload has none."""
        return self.payload[1] if len(self.payload) > 1 else None


class FrameDecoder:
    """Turns an arbitrary byte stream into CRC-checked frames.

    Goals: never block, never raise on junk, never keep more than one partial
    frame (``MAX_FRAME - 1`` bytes) between calls, and never lose a valid frame
    that follows junk.

    How: ``feed()`` scans for 0xAA. A candidate with an impossible length
    (0 or above ``MAX_PAYLOAD``) is rejected at once. A complete candidate
    whose CRC fails costs only its sync byte: scanning resumes one byte later,
    so a real frame hidden behind a false sync is still found. Worst case: a
    false sync with a plausible length holds back up to ``MAX_FRAME`` bytes
    until enough data arrives to check it; each byte is examined at most
    ``MAX_FRAME`` times.

    Frames come out of ``next_frame()`` or by iterating the decoder.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._frames: Deque[Frame] = deque()
        self.frames_ok = 0
        self.crc_errors = 0
        self.bad_lengths = 0
        self.junk_bytes = 0
        self.peak_buffer = 0

    def feed(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        while True:
            start = buf.find(SYNC, pos)
            if start < 0:
                self.junk_bytes += end - pos
                pos = end
                break
            self.junk_bytes += start - pos
            pos = start
            if end - start < HEADER_SIZE:
                break
            length = buf[start + 1] | (buf[start + 2] << 8)
            if not 1 <= length <= MAX_PAYLOAD:
                self.bad_lengths += 1
                self.junk_bytes += 1
                pos = start + 1
                continue
            frame_end = start + HEADER_SIZE + length + 1
            if frame_end > end:
                break
            body = bytes(buf[start + HEADER_SIZE : frame_end])
            if crc8(body) != 0:
                self.crc_errors += 1
                self.junk_bytes += 1
                pos = start + 1
                continue
            self._frames.append(Frame(body[:-1]))
            self.frames_ok += 1
            pos = frame_end
        del buf[:pos]
        if len(buf) > self.peak_buffer:
            self.peak_buffer = len(buf)

    def next_frame(self) -> Optional[Frame]:
        return self._frames.popleft() if self._frames else None

    def __iter__(self) -> Iterator[Frame]:
        while self._frames:
            yield self._frames.popleft()

    @property
    def buffered(self) -> int:
        """Bytes held back as a possible partial frame."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget partial data, e.g. after a reconnect; counters are kept."""
        self._buffer.clear()
        self._frames.clear()


# --- measurements -------------------------------------------------------------

# Physically possible readings for a 100 V / 15 A plug meter. Readings outside
# these are corruption that slipped past the CRC, not data. Power above
# 1966.08 W (top byte > 5) is what another client already treats as garbage.
VOLTS_RANGE = (50.0, 140.0)
MILLIAMPS_MAX = 20_000.0
WATTS_MAX = 1966.08


@dataclass(frozen=True)
class Measurement:
    """One reading, stamped with the meter's own clock (naive, UTC as set by us)."""

    time: dt.datetime
    volts: float
    milliamps: float
    watts: float


def _u24(data: bytes, offset: int) -> int:
    return data[offset] | (data[offset + 1] << 8) | (data[offset + 2] << 16)


def decode_measurement(payload: bytes) -> Measurement:
    """Decode a 0x08 response payload; raise MeasurementError if it is not trustworthy."""
    if len(payload) != MEASUREMENT_PAYLOAD_SIZE or payload[0] != CMD_GET_DATA:
        raise MeasurementError(
            f"not a measurement: command 0x{payload[0]:02X}, {len(payload)}-byte payload"
            if payload
            else "not a measurement: empty payload"
        )
    if payload[1] != 0:
        raise MeasurementError(f"meter reported status 0x{payload[1]:02X} (byte 1 of payload)")
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
    if not VOLTS_RANGE[0] <= volts <= VOLTS_RANGE[1]:
        raise MeasurementError(f"impossible voltage {volts} V (payload bytes 5-7)")
    if milliamps > MILLIAMPS_MAX:
        raise MeasurementError(f"impossible current {milliamps} mA (payload bytes 2-4)")
    if watts > WATTS_MAX:
        raise MeasurementError(f"impossible power {watts} W (payload bytes 8-10)")
    return Measurement(when, volts, milliamps, watts)


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
