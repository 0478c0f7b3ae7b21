"""The hour-file catalogue: closed hours in the data dir, their rows, their CSV body and job ids."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Set, Tuple

from ..datadir import FAILED_DIR, file_lines, hour_sources  # noqa: F401  (FAILED_DIR: re-exported)
from ..writer import (
    HOUR_FORMAT,
    hour_of,
    line_stamp,
    open_text,
    parse_closed,
    parse_stamp,
)
from .errors import PermanentError

log = logging.getLogger(__name__)

COLUMNS = ("datetime", "V", "mA", "W")
PLAIN_RE = re.compile(r"^(?P<stem>.+)\.(csv|json)$")  # the writer's current hour
DEVICE_COLUMN = "device"


@dataclass(frozen=True)
class HourFile:
    """One meter's closed hour (or late part): the unit of upload."""

    key: str
    stem: str
    hour: dt.datetime
    part: int
    sources: Tuple[Path, ...]  # most precise first

    @property
    def meter_suffix(self) -> str:
        return self.stem[len("wattchecker-data-"):] if self.stem.startswith("wattchecker-data-") else ""


def hour_key(stem: str, hour: dt.datetime, part: int) -> str:
    return f"{stem}.{hour.strftime(HOUR_FORMAT)}" + (f".part{part}" if part else "")


def hour_files(paths: Sequence[Path]) -> List[HourFile]:
    """Group closed files by hour key, JSON before CSV, oldest hour first."""
    groups: Dict[str, List[Tuple[str, Path]]] = {}
    info: Dict[str, Tuple[str, dt.datetime, int]] = {}
    for path in paths:
        parsed = parse_closed(path)
        if parsed is None:
            continue
        stem, fmt, hour, part = parsed
        key = hour_key(stem, hour, part)
        groups.setdefault(key, []).append((fmt, path))
        info[key] = (stem, hour, part)
    result = []
    for key, found in groups.items():
        stem, hour, part = info[key]
        ordered = tuple(p for _, p in sorted(found, key=lambda fp: fp[0] != "json"))
        result.append(HourFile(key, stem, hour, part, ordered))
    return sorted(result, key=lambda h: (h.hour, h.part, h.stem))


# --- rows ------------------------------------------------------------------------


def row_fields(line: str) -> Dict[str, str]:
    """A CSV or JSON row as the table's text fields; full float precision from JSON."""
    if line.startswith("{"):
        obj = json.loads(line)
        return {"datetime": obj["datetime"], "V": repr(float(obj["V"])), "mA": repr(float(obj["mA"])),
                "W": repr(float(obj["W"]))}
    stamp, volts, milliamps, watts = line.rstrip("\n").split(",")
    return {"datetime": stamp, "V": volts, "mA": milliamps, "W": watts}


def read_rows(path: Path) -> List[Dict[str, str]]:
    """The rows of one closed file as text fields (``upload --dry-run`` and tests)."""
    rows = []
    for number, (_, _, line) in enumerate(file_lines(path), 1):
        try:
            rows.append(row_fields(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError(f"{path.name}: line {number} is not a row: {exc}") from None
    return rows


def readable_rows(hour_file: HourFile) -> Tuple[Path, List[Dict[str, str]]]:
    """The rows this upload unit owns: its hour's union (``datadir.read_union``), the seconds whose
    first part is this one, JSON's values where both formats hold them. A damaged file is
    quarantined on the way; PermanentError if a row still cannot be read."""
    sources = hour_sources(hour_file.sources[0].parent, hour_file.stem, hour_file.hour)
    union = sources.union(hour_file.hour) if hour_file.hour in sources.by_hour else {}
    left = sources.by_hour.get(hour_file.hour, {}).get(hour_file.part, {})
    if not left:
        raise PermanentError("no file of it can be read (the damaged ones are in failed/)")
    rows = []
    for second in sorted(union):
        row = union[second]
        if row.owner == hour_file.part:
            try:
                rows.append(row_fields(row.line))
            except (ValueError, KeyError, TypeError) as exc:
                raise PermanentError(f"{hour_file.key}: a row cannot be read ({exc}): {row.line!r}") from None
    return left.get("json") or left["csv"], rows


def csv_body(rows: List[Dict[str, str]], columns: Sequence[str], device: str) -> bytes:
    """Uncompressed CSV in the table's column order; ``device`` fills a device column."""
    unknown = [c for c in columns if c not in COLUMNS and c != DEVICE_COLUMN]
    if unknown:
        raise PermanentError(f"the table has columns this client does not write: {', '.join(unknown)}")
    lines = []
    for row in rows:
        lines.append(",".join(device if c == DEVICE_COLUMN else row[c] for c in columns))
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def job_id_for(table: str, hours: Sequence[HourFile], body: bytes, attempt: int = 0) -> str:
    """Deterministic: the same rows of the same hours for the same table give the same job.

    ``attempt`` counts earlier jobs of this batch that failed: their ids are used up.
    """
    import hashlib  # here, not at the top: retention without BigQuery uses this module, not OpenSSL's 4 MB

    digest = hashlib.sha256("\n".join(h.key for h in hours).encode() + b"\0" + body).hexdigest()[:16]
    span = hours[0].key + (f"_{len(hours)}h" if len(hours) > 1 else "")
    raw = f"wattchecker_{table}_{span}_{digest}" + (f"_retry{attempt}" if attempt else "")
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)[:1024]


def open_hours(data_dir: Path) -> Set[Tuple[str, dt.datetime]]:
    """(stem, hour) of the writer's plain files: an hour closed in one format while another
    format's plain file still holds it is being closed right now."""
    found = set()
    for entry in os.scandir(data_dir) if data_dir.is_dir() else ():
        match = PLAIN_RE.match(entry.name)
        if not match:
            continue
        try:
            with open_text(Path(entry.path)) as f:
                stamp = line_stamp(f.readline())
        except (OSError, UnicodeDecodeError):
            continue
        if stamp:
            found.add((match.group("stem"), hour_of(parse_stamp(stamp))))
    return found


def day_groups(hours: Sequence[HourFile]) -> List[List[HourFile]]:
    """Hours by meter and UTC day, oldest group first: each group is at most one load job's worth."""
    groups: Dict[Tuple[str, dt.date], List[HourFile]] = {}
    for hour_file in sorted(hours, key=lambda h: (h.hour, h.part, h.stem)):
        groups.setdefault((hour_file.stem, hour_file.hour.date()), []).append(hour_file)
    return list(groups.values())
