"""Row formats of the original client, kept byte for byte for existing users."""

from __future__ import annotations

import json

from .protocol import Measurement

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def json_line(m: Measurement) -> str:
    """``{"datetime": ..., "V": ..., "mA": ..., "W": ...}`` at full precision."""
    return json.dumps(
        {"datetime": m.time.strftime(DATETIME_FORMAT), "V": m.volts, "mA": m.milliamps, "W": m.watts}
    )


def csv_line(m: Measurement) -> str:
    """``datetime,V,mA,W`` with two decimals, no header."""
    return f"{m.time.strftime(DATETIME_FORMAT)},{m.volts:.2f},{m.milliamps:.2f},{m.watts:.2f}"


FORMATTERS = {"json": json_line, "csv": csv_line}
