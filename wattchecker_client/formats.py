"""Row formats of the original client, kept byte for byte for existing users."""

from __future__ import annotations

import json
from typing import Callable, Sequence

from .protocol import Measurement

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def json_line(m: Measurement) -> str:
    """``{"datetime": ..., "V": ..., "mA": ..., "W": ...}`` at full precision."""
    return json.dumps(
        {"datetime": m.time.strftime(DATETIME_FORMAT), "V": m.volts, "mA": m.milliamps, "W": m.watts}
    )


def csv_value(value: float) -> str:
    """A CSV field: two decimals, as the original client wrote them."""
    return f"{value:.2f}"


def csv_line(m: Measurement) -> str:
    """``datetime,V,mA,W`` with two decimals, no header."""
    return f"{m.time.strftime(DATETIME_FORMAT)},{csv_value(m.volts)},{csv_value(m.milliamps)},{csv_value(m.watts)}"


FORMATTERS = {"json": json_line, "csv": csv_line}


def watts_as_stored(data_format: Sequence[str]) -> Callable[[Measurement], float]:
    """W of a reading exactly as the data folder's union reads it back: JSON's when kept, else CSV's.

    JSON keeps the float as it is (its repr round-trips), so only CSV rounds.
    """
    if "json" in data_format:
        return lambda m: m.watts
    return lambda m: float(csv_value(m.watts))
