"""What both RATOC models share, sans I/O: CRC-8, frames, the stream decoder, Measurement, Dialect.

The REX-BTWATTCH1 and the RS-BTWATTCH2 frame their messages alike
(``AA length payload crc``); only the length's byte order differs, so one
decoder, told the byte order, serves both.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Iterator, Optional, Tuple

import crcmod

SYNC = 0xAA
HEADER_SIZE = 3  # 0xAA + 2-byte length
# The largest known payload is the BTWATTCH2's 27-byte measurement; leave room
# for unknown commands, but refuse lengths that would make us wait for data
# that will never come.
MAX_PAYLOAD = 32
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + 1

crc8 = crcmod.mkCrcFun(0x185, initCrc=0, rev=False)


class ProtocolError(Exception):
    """A response that is well framed but carries no usable data."""


class MeasurementError(ProtocolError):
    """A measurement frame whose status or values cannot be trusted."""


def encode_frame(payload: bytes, big_endian: bool = False) -> bytes:
    """Wrap a payload (command byte first) as ``AA length payload crc``.

    The BTWATTCH1 sends the length little-endian, the BTWATTCH2 big-endian.
    """
    if not 1 <= len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"payload length {len(payload)} outside 1..{MAX_PAYLOAD}")
    length = len(payload).to_bytes(2, "big" if big_endian else "little")
    return bytes((SYNC,)) + length + payload + bytes((crc8(payload),))


def ack_payload(command: int, status: int = 0) -> bytes:
    """The 2-byte response payload to a command that returns no data (set clock, start, stop)."""
    return bytes((command, status))


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

    ``big_endian`` picks the length's byte order: False for the BTWATTCH1,
    True for the BTWATTCH2. A stream of the other model never frames: its
    lengths read as hundreds of bytes and are rejected.

    Frames come out of ``next_frame()`` or by iterating the decoder.
    """

    def __init__(self, big_endian: bool = False) -> None:
        self.big_endian = big_endian
        # Offsets of the length's high and low byte after the sync byte.
        self._high, self._low = (1, 2) if big_endian else (2, 1)
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
        high, low = self._high, self._low
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
            length = buf[start + low] | (buf[start + high] << 8)
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


@dataclass(frozen=True)
class Measurement:
    """One reading, stamped with the meter's own clock (naive, UTC as set by us).

    The same for every model, so files, BigQuery rows and reports do not care
    which meter took it.
    """

    time: dt.datetime
    volts: float
    milliamps: float
    watts: float


def check_measurement_shape(payload: bytes, command: int, size: int) -> None:
    """MeasurementError unless ``payload`` is a ``size``-byte answer to ``command`` with status OK."""
    if len(payload) != size or payload[0] != command:
        raise MeasurementError(
            f"not a measurement: command 0x{payload[0]:02X}, {len(payload)}-byte payload"
            if payload
            else "not a measurement: empty payload"
        )
    if payload[1] != 0:
        raise MeasurementError(f"meter reported status 0x{payload[1]:02X} (byte 1 of payload)")


@dataclass(frozen=True)
class Limits:
    """What a model's meter can honestly read; beyond it a frame is corrupt, not data.

    The ``*_bytes`` name each field's payload bytes, for the message.
    """

    volts: Tuple[float, float]
    milliamps_max: float
    watts_max: float
    volts_bytes: str
    milliamps_bytes: str
    watts_bytes: str

    def check(self, m: Measurement) -> None:
        if not self.volts[0] <= m.volts <= self.volts[1]:
            raise MeasurementError(f"impossible voltage {m.volts} V (payload bytes {self.volts_bytes})")
        if m.milliamps > self.milliamps_max:
            raise MeasurementError(f"impossible current {m.milliamps} mA (payload bytes {self.milliamps_bytes})")
        if m.watts > self.watts_max:
            raise MeasurementError(f"impossible power {m.watts} W (payload bytes {self.watts_bytes})")


@dataclass(frozen=True)
class Reading:
    """A decoded measurement response: the Measurement, and the relay state where the model has one."""

    measurement: Measurement
    relay: Optional[bool] = None


@dataclass(frozen=True)
class Dialect:
    """What differs between models, so one session and one simulated meter speak either.

    Optional parts are None where a model has no such command: the BTWATTCH2
    has no start or stop, the BTWATTCH1 no relay.
    """

    model: str
    product: str
    big_endian: bool
    measurement_size: int
    set_clock_request: Callable[[dt.datetime], bytes]
    decode_clock: Callable[[bytes], dt.datetime]
    get_data_request: Callable[[], bytes]
    decode_reading: Callable[[bytes], Reading]
    # (measurement, relay state) -> response payload, as the meter would send it
    measurement_payload: Callable[[Measurement, bool], bytes]
    start_request: Optional[Callable[[int], bytes]] = None
    stop_request: Optional[Callable[[], bytes]] = None
    relay_request: Optional[Callable[[bool], bytes]] = None
    decode_relay_ack: Optional[Callable[[bytes], bool]] = None
    identify_request: Optional[Callable[[], bytes]] = None

    @property
    def has_relay(self) -> bool:
        return self.relay_request is not None

    def encode_frame(self, payload: bytes) -> bytes:
        return encode_frame(payload, self.big_endian)

    def decoder(self) -> FrameDecoder:
        return FrameDecoder(big_endian=self.big_endian)

    def quantize(self, m: Measurement) -> Measurement:
        """The measurement exactly as it reads back after a trip over this model's wire."""
        return self.decode_reading(self.measurement_payload(m, True)).measurement
