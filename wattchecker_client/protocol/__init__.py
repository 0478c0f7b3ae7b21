"""The meters' wire protocols, sans I/O: one module per model, the shared framing in ``frames``.

Bytes and datetimes go in; bytes, frames and values come out. Nothing here
touches a socket or reads the clock.

- ``frames``: CRC-8, ``AA length payload crc`` frames, the stream decoder, Measurement, Dialect
- ``btwattch1``: REX-BTWATTCH1 (Classic SPP); its names are also exported here, as before
- ``btwattch2``: RS-BTWATTCH2 (BLE, relay, advertisements)

``dialect(model)`` gives what a session needs to speak a model.
"""

from __future__ import annotations

from typing import Dict

from . import btwattch1, btwattch2
from .btwattch1 import (
    CMD_GET_DATA,
    CMD_SET_CLOCK,
    CMD_START,
    CMD_STOP,
    MEASUREMENT_PAYLOAD_SIZE,
    MILLIAMPS_MAX,
    VOLTS_RANGE,
    WATTS_MAX,
    decode_clock,
    decode_measurement,
    get_data_request,
    measurement_payload,
    quantize,
    set_clock_request,
    start_request,
    stop_request,
)
from .btwattch2 import MANUFACTURER_ID, Advertisement, decode_advertisement, encode_advertisement
from .frames import (
    HEADER_SIZE,
    MAX_FRAME,
    MAX_PAYLOAD,
    SYNC,
    Dialect,
    Frame,
    FrameDecoder,
    Measurement,
    MeasurementError,
    ProtocolError,
    Reading,
    ack_payload,
    crc8,
    encode_frame,
)

DIALECTS: Dict[str, Dialect] = {d.model: d for d in (btwattch1.DIALECT, btwattch2.DIALECT)}
MODELS = tuple(DIALECTS)
DEFAULT_MODEL = btwattch1.DIALECT.model


def dialect(model: str) -> Dialect:
    """The dialect of ``model`` (btwattch1 or btwattch2); ValueError names the known ones."""
    try:
        return DIALECTS[model]
    except KeyError:
        raise ValueError(f"unknown meter model {model!r}; known: {', '.join(MODELS)}") from None


__all__ = [
    "CMD_GET_DATA", "CMD_SET_CLOCK", "CMD_START", "CMD_STOP", "DEFAULT_MODEL", "DIALECTS", "HEADER_SIZE",
    "MANUFACTURER_ID", "MAX_FRAME", "MAX_PAYLOAD", "MEASUREMENT_PAYLOAD_SIZE", "MILLIAMPS_MAX", "MODELS", "SYNC",
    "VOLTS_RANGE", "WATTS_MAX", "Advertisement", "Dialect", "Frame", "FrameDecoder", "Measurement",
    "MeasurementError", "ProtocolError", "Reading", "ack_payload", "btwattch1", "btwattch2", "crc8",
    "decode_advertisement", "decode_clock", "decode_measurement", "dialect", "encode_advertisement",
    "encode_frame", "get_data_request", "measurement_payload", "quantize", "set_clock_request",
    "start_request", "stop_request",
]
