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

Two more files outlive the process and keep their rooms for now, written
through the same ``writer.atomic_write``: ``energy.json`` (``live.py``: each
meter's energy and the last row counted, every checkpoint once the rows are
on disk) and ``meter-ids.json`` (``identity.py``: each meter's id, once).

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
from typing import Any, Dict

from .writer import atomic_write

log = logging.getLogger(__name__)

RELAY_FILE = "relay.json"
CLOCK_FILE = "clock.json"


class SavedMeters:
    """One file of per-meter entries: read at start, rewritten whole (atomically) when an entry changes."""

    def __init__(self, path: Path, unreadable: str, unsaved: str) -> None:
        self.path = path
        self.unsaved = unsaved  # what a failed save means, for its error line
        self._lock = threading.Lock()  # the readers save from their own threads
        self._meters = self._read(unreadable)

    def get(self, name: str) -> Dict[str, Any]:
        entry = self._meters.get(name)
        return dict(entry) if isinstance(entry, dict) else {}

    def put(self, name: str, entry: Dict[str, Any]) -> None:
        with self._lock:
            self._meters[name] = entry
            data = json.dumps({"meters": self._meters}, indent=1).encode()
            try:
                atomic_write(self.path, data, compress=False)
            except OSError as exc:
                log.error("%s: cannot save %s (%s): %s", name, self.path.name, exc.strerror or exc, self.unsaved)

    def _read(self, unreadable: str) -> Dict[str, Any]:
        try:
            meters = json.loads(self.path.read_text(encoding="utf-8"))["meters"]
            if not isinstance(meters, dict):
                raise ValueError("meters is not a mapping")
            return meters
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable (%s); %s", self.path, exc, unreadable)
            return {}
