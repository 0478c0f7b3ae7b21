"""What a meter's reader leaves for the next run: one file per kind, one entry per meter, one write path.

The files, in the data folder (``general.data_dir``), each ``{"meters": {name: entry}}``:

- ``relay.json``: an RS-BTWATTCH2's relay memory (``RelayPolicy.memory``): the
  over-power latch, the state the service last set (``on_connect: restore``)
  and the meter second its relay was first seen on (``auto_off_after``).
  Written when one of them changes.
- ``clock.json``: after the service set a meter's clock back, where the
  watermark went and the newest wrong second kept before it
  (``Watermark.memory``). Written at such a set-back, and once the meter's
  right seconds pass the wrong ones (the entry is then empty).

- ``meter-ids.json``: each meter's id on MQTT and in BigQuery, ``{name: id}``
  (``identity.py`` decides them). Written once, when a meter is new.

One more file outlives the process and keeps its room for now, written through
the same ``writer.atomic_write``: ``energy.json`` (``live.py``: each meter's
energy and the last row counted, at each checkpoint once the rows are on disk).

Each file here is read once at start and each meter's entry handed to its reader
(``meter.MeterMemory``); the reader tells its listener when one changes and
the daemon saves it here, all or nothing (``writer.atomic_write``). A file
that cannot be read loses nothing else: one warning, and the meters start
as on a first run.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from .writer import atomic_write

log = logging.getLogger(__name__)

RELAY_FILE = "relay.json"
CLOCK_FILE = "clock.json"
IDS_FILE = "meter-ids.json"


def load_meters(path: Path, unreadable: str) -> Optional[Dict[str, Any]]:
    """A file's ``meters`` mapping; None when there is none, or (with one warning saying ``unreadable``) no good one."""
    try:
        meters = json.loads(path.read_text(encoding="utf-8"))["meters"]
        if not isinstance(meters, dict):
            raise ValueError("meters is not a mapping")
        return meters
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable (%s); %s", path, exc, unreadable)
        return None


def write_meters(path: Path, meters: Mapping[str, Any]) -> None:
    """All or nothing, 0640 like the rest of the data folder: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps({"meters": meters}, indent=1, sort_keys=True) + "\n").encode(), compress=False)


class SavedMeters:
    """One file of per-meter entries: read at start, rewritten whole (atomically) when an entry changes."""

    def __init__(self, path: Path, unreadable: str, unsaved: str) -> None:
        self.path = path
        self.unsaved = unsaved  # what a failed save means, for its error line
        self._lock = threading.Lock()  # the readers save from their own threads
        self._meters = load_meters(path, unreadable) or {}

    def get(self, name: str) -> Dict[str, Any]:
        entry = self._meters.get(name)
        return dict(entry) if isinstance(entry, dict) else {}

    def put(self, name: str, entry: Dict[str, Any]) -> None:
        with self._lock:
            self._meters[name] = entry
            try:
                write_meters(self.path, self._meters)
            except OSError as exc:
                log.error("%s: cannot save %s (%s): %s", name, self.path.name, exc.strerror or exc, self.unsaved)
