"""Which hours are in BigQuery: the ledger (``uploaded.json`` and its append-only journal)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ..fileops import atomic_write, private_file

log = logging.getLogger(__name__)

LEDGER_NAME = "uploaded.json"  # BigQuery's
INFLUX_LEDGER_NAME = "influx-uploaded.json"
JOURNAL_NAME = LEDGER_NAME + ".journal"


class Ledger:
    """Which hours are in BigQuery, and which batch is on its way: a snapshot and an append-only journal.

    ``uploaded`` maps an hour key to the job that loaded it; ``pending`` maps a
    job id to the hours it carries, written before the job is submitted. The
    snapshot (``uploaded.json``, the ledger's whole format before the journal)
    is rewritten only when it is compacted: at start-up, and when the journal
    has grown to the snapshot's size. Each batch appends one line (and its
    outcome another) to ``uploaded.json.journal``, so the bytes written per
    uploaded hour do not grow with the years of history; re-reading the
    journal under the lock reads only the lines added since. The lock lets a
    running daemon and `wattchecker-client upload` share it.
    """

    def __init__(self, data_dir: Path, compact: bool = True, name: str = LEDGER_NAME) -> None:
        # ``name``: each sink keeps its own ledger (BigQuery ``uploaded.json``, InfluxDB ``influx-uploaded.json``)
        self.name = name
        self.path = data_dir / name
        self.journal = data_dir / (name + ".journal")
        self._lock_path = data_dir / (name + ".lock")
        self._entries: Dict[str, dict] = {}
        self._pending: Dict[str, dict] = {}
        self._snapshot_id: Optional[Tuple[int, int, int]] = None
        self._journal_at: Tuple[int, int] = (-1, 0)  # (inode, bytes applied)
        self.reload()
        if compact and self._journal_at[1]:
            with self._locked():
                self._compact()

    def reload(self) -> None:
        """The snapshot when it changed (a compaction), then the journal's lines not yet applied."""
        try:
            stat = self.path.stat()
            snapshot_id = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if snapshot_id != self._snapshot_id:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._entries = dict(data.get("uploaded", {}))
                self._pending = dict(data.get("pending", {}))
                self._snapshot_id, self._journal_at = snapshot_id, (-1, 0)
        except FileNotFoundError:
            if self._snapshot_id is not None:
                self._entries, self._pending, self._journal_at = {}, {}, (-1, 0)
            self._snapshot_id = None
        except (ValueError, AttributeError) as exc:
            # Starting afresh is safe: job ids are deterministic, so an hour
            # already in BigQuery is found (409) and adopted, never loaded twice.
            aside = self.path.with_name(self.name + ".unreadable")
            os.replace(self.path, aside)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.journal, self.journal.with_name(self.journal.name + ".unreadable"))
            log.error("%s was unreadable (%s): moved to %s; rebuilding it from the server (a re-sent hour is found, "
                      "never stored twice)",
                      self.path, exc, aside.name)
            self._entries, self._pending = {}, {}
            self._snapshot_id, self._journal_at = None, (-1, 0)
        self._read_journal()

    def _read_journal(self) -> None:
        """Apply the journal's complete lines after those applied (all of them after a compaction)."""
        try:
            with open(self.journal, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                start = self._journal_at[1] if inode == self._journal_at[0] else 0
                f.seek(start)
                tail = f.read()
        except FileNotFoundError:
            return
        complete = tail[:tail.rfind(b"\n") + 1]  # a torn last line waits (the next append ends it)
        for line in complete.splitlines():
            if line.strip():
                self._apply(line)
        self._journal_at = (inode, start + len(complete))

    def _apply(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            if "begin" in event:
                self._pending[event["begin"]] = event["batch"]
            elif "commit" in event:
                self._pending.pop(event["commit"], None)
                self._entries.update(event["entries"])
            else:
                self._pending.pop(event["abort"], None)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s: skipped a line that is not an event (%s)", self.journal, exc)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Optional[dict]:
        return self._entries.get(key)

    def pending(self) -> Dict[str, dict]:
        """Batches written ahead and not yet resolved: job id -> {"hours": {key: ...}, ...}."""
        return dict(self._pending)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.reload()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, event: dict) -> None:
        """One event, durable, then applied; a compaction once the journal outgrows the snapshot."""
        line = json.dumps(event, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
        with open(self.journal, "ab", opener=private_file) as f:
            if f.tell() > self._journal_at[1]:
                line = b"\n" + line  # after a torn line a crash left: start a line of our own
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._read_journal()
        if self._journal_at[1] > (self._snapshot_id[2] if self._snapshot_id else 0):
            self._compact()

    def _compact(self) -> None:
        """The whole state into the snapshot, then an empty journal (replaying it twice changes nothing)."""
        data = {"version": 2, "uploaded": self._entries, "pending": self._pending}
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"), compress=False)
        atomic_write(self.journal, b"", compress=False)
        self._snapshot_id = None
        self.reload()

    def begin(self, job_id: str, batch: dict) -> List[str]:
        """Write a batch ahead; the hours another job holds or has loaded instead (then nothing is written)."""
        with self._locked():
            taken = {k for other, b in self._pending.items() if other != job_id for k in b["hours"]}
            taken.update(k for k in batch["hours"] if k in self._entries)
            clash = sorted(k for k in batch["hours"] if k in taken)
            if not clash:
                self._append({"begin": job_id, "batch": batch})
            return clash

    def commit(self, job_id: str, entries: Dict[str, dict]) -> None:
        """The batch's job succeeded: its hours are credited and the batch is resolved, in one write."""
        with self._locked():
            self._append({"commit": job_id, "entries": entries})

    def abort(self, job_id: str) -> None:
        """The batch's job loaded nothing: forget it, its hours are queued again."""
        with self._locked():
            if job_id in self._pending:
                self._append({"abort": job_id})


def read_ledger(data_dir: Path) -> dict:
    """``{"uploaded": ..., "pending": ...}`` as the ledger stands (snapshot and journal), writing nothing."""
    ledger = Ledger(data_dir, compact=False)
    return {"version": 2, "uploaded": dict(ledger._entries), "pending": ledger.pending()}
