"""What a user would check in a data dir: every row genuine, in its hour, once."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

from wattchecker_client.formats import csv_line, json_line
from wattchecker_client.simulator import air_conditioner, switched_off

CLOSED_RE = re.compile(r"^(?P<base>.+\.(csv|json))\.(?P<hour>\d{4}-\d\d-\d\d_\d\d)(\.part\d+)?\.gz$")


def read(path: Path) -> List[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    assert text == "" or text.endswith("\n"), f"{path.name}: torn last line"
    return text.splitlines()


def stamp_of(line: str, fmt: str) -> dt.datetime:
    raw = json.loads(line)["datetime"] if fmt == "json" else line.split(",")[0]
    return dt.datetime.strptime(raw, "%Y-%m-%d %H:%M:%S")


def check_data_dir(
    data_dir: Path,
    seed: int,
    base: str = "wattchecker-data",
    formats_agree: bool = True,
    model: str = "btwattch1",
    relay_switched: bool = False,
) -> Dict[str, List[dt.datetime]]:
    """Assert the invariants; return the seconds held per format.

    Every row must be what the simulated ``model`` meter measured at its
    second, at that model's wire resolution; with ``relay_switched``, a row may
    also be that second's reading with the relay off (0 mA, 0 W).
    After a SIGKILL between the JSON and the CSV part of one flush, the CSV
    can lack the seconds of that one flush: ``formats_agree=False``.
    """
    assert not list(data_dir.glob("*.tmp")), "temporary files left behind"
    seconds: Dict[str, List[dt.datetime]] = defaultdict(list)
    hours_closed: Dict[str, set] = defaultdict(set)
    files = []
    for path in sorted(data_dir.iterdir()):
        match = CLOSED_RE.match(path.name)
        if match and match.group("base").startswith(base + "."):
            fmt = match.group("base").rsplit(".", 1)[1]
            hour = dt.datetime.strptime(match.group("hour"), "%Y-%m-%d_%H")
            hours_closed[fmt].add(hour)
            files.append((path, fmt, hour))
        elif path.name in (f"{base}.csv", f"{base}.json"):
            files.append((path, path.name.rsplit(".", 1)[1], None))
    for path, fmt, hour in files:
        name = path.name
        lines = read(path)
        if hour is not None:
            assert lines, f"{name}: an empty closed file"
        file_hours = set()
        for line in lines:
            when = stamp_of(line, fmt)
            expected = air_conditioner(when, seed, model)
            readings = [expected, switched_off(expected)] if relay_switched else [expected]
            assert line in [json_line(m) if fmt == "json" else csv_line(m) for m in readings], f"{name}: {line!r}"
            file_hours.add(when.replace(minute=0, second=0))
            seconds[fmt].append(when)
        if hour is not None:
            assert file_hours == {hour}, f"{name} holds rows of {sorted(file_hours)}"
        else:
            assert len(file_hours) <= 1, f"{name} holds rows of several hours: {sorted(file_hours)}"
            assert not file_hours & hours_closed[fmt], f"{name} holds rows of a closed hour"
    for fmt, stamps in seconds.items():
        assert len(stamps) == len(set(stamps)), f"{fmt}: a second recorded twice"
    if len(seconds) == 2 and formats_agree:
        assert sorted(seconds["csv"]) == sorted(seconds["json"]), "csv and json disagree"
    return seconds


def closed_hours(data_dir: Path, fmt: str = "csv") -> List[str]:
    return sorted(p.name for p in data_dir.glob(f"*.{fmt}.*.gz"))
