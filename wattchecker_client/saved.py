"""What outlives the process: one file per kind, one entry per meter, one write path.

The files, in the data folder (``general.data_dir``), each ``{"meters": {name: entry}}``:

- ``relay.json``: an RS-BTWATTCH2's relay memory (``RelayPolicy.memory``): the
  over-power latch, the state the service last set (``on_connect: restore``)
  and the meter second its relay was first seen on (``auto_off_after``).
  Written when one of them changes.
- ``clock.json``: after the service set a meter's clock back, where the
  watermark went and the newest wrong second kept before it
  (``Watermark.memory``). Written at such a set-back, and once the meter's
  right seconds pass the wrong ones (the entry is then empty).
- ``energy.json`` (with ``"version": 1``): each meter's energy counter
  (``live.LiveState``): the joules credited up to the last row counted, the
  highest value shown, whether late rows await a recount, and the run
  detector's state. Written at each checkpoint once the rows are on disk, and
  at stop.
- ``meter-ids.json``: each meter's id on MQTT and in BigQuery, ``{name: id}``
  (``identity.py`` decides them). Written once, when a meter is new.

The daemon reads each file once, at start (``SavedMeters``), and hands it to
the component that keeps it: each meter's relay and clock entries to its reader
(``meter.MeterMemory``), the energy file to the live state. Every write is
all or nothing (``fileops.atomic_write``): a crash leaves the old file or the
new one. A file that cannot be read loses nothing else: one warning, and the
meters start as on a first run.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from .fileops import atomic_write

log = logging.getLogger(__name__)

RELAY_FILE = "relay.json"
CLOCK_FILE = "clock.json"
IDS_FILE = "meter-ids.json"
ENERGY_FILE = "energy.json"
ENERGY_VERSION = 1  # energy.json's layout; a file of another version is counted again from the data files


def load_meters(path: Path, unreadable: str, version: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """A file's ``meters`` mapping; None when there is none, or (with one warning saying ``unreadable``) no good one."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if version is not None and document.get("version") != version:
            raise ValueError(f"not a version {version} file")
        meters = document["meters"]
        if not isinstance(meters, dict):
            raise ValueError("meters is not a mapping")
        return meters
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: unreadable (%s); %s", path, exc, unreadable)
        return None


def write_meters(path: Path, meters: Mapping[str, Any], version: Optional[int] = None) -> None:
    """All or nothing, 0640 like the rest of the data folder: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meters": meters} if version is None else {"version": version, "meters": meters}
    atomic_write(path, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode(), compress=False)


class SavedMeters:
    """One file of per-meter entries: read at start, rewritten whole (atomically) when an entry changes."""

    def __init__(self, path: Path, unreadable: str, unsaved: str, version: Optional[int] = None) -> None:
        self.path = path
        self.unsaved = unsaved  # what a failed save means, for its error line
        self.version = version
        self._lock = threading.Lock()  # the readers save from their own threads
        self._meters = load_meters(path, unreadable, version) or {}

    def get(self, name: str) -> Dict[str, Any]:
        entry = self._meters.get(name)
        return dict(entry) if isinstance(entry, dict) else {}

    def entries(self) -> Dict[str, Dict[str, Any]]:
        """Every meter's entry, as read at start or last saved."""
        return {name: dict(entry) for name, entry in self._meters.items() if isinstance(entry, dict)}

    def put(self, name: str, entry: Dict[str, Any]) -> None:
        """Save one meter's entry; a failure is logged (``unsaved`` says what it costs), the rest goes on."""
        with self._lock:
            self._meters[name] = entry
            try:
                write_meters(self.path, self._meters, self.version)
            except OSError as exc:
                log.error("%s: cannot save %s (%s): %s", name, self.path.name, exc.strerror or exc, self.unsaved)

    def replace(self, meters: Dict[str, Dict[str, Any]]) -> None:
        """Save every meter's entry at once; raises OSError, for a caller that keeps its own count of failures."""
        with self._lock:
            write_meters(self.path, meters, self.version)
            self._meters = dict(meters)


def saved_energy(data_dir: Path) -> SavedMeters:
    """energy.json: the live state's counts (``live.LiveState``)."""
    return SavedMeters(data_dir / ENERGY_FILE, "counting energy from the data files",
                       "energy shown stays put until it can", version=ENERGY_VERSION)
