"""Closed hour files -> BigQuery load jobs: each hour lands exactly once, through any outage.

The unit of bookkeeping is one meter's closed hour (or late part of one), keyed
by its name without the format: ``wattchecker-data.2019-09-07_09``. Its rows are
read from the JSON file when there is one (full precision), else from the CSV
file, and sent as uncompressed CSV in the table's own column order.

A backlog loads in batches: the queued hours of one meter and one UTC day (up
to a size cap) go in one load job, because BigQuery spends seconds per job and
counts jobs against a daily per-table quota.

Exactly once: before a job is submitted, its id and the hours in it are
written ahead into the ledger (``uploaded.json`` and its journal) as a pending batch. A
restart resolves that batch first: the job done credits exactly its hours, the
job failed puts them back in the queue, the job never submitted is submitted
under the same id. Job ids are derived from the table, the hours and a hash of
the rows, so a retry finds the job it already submitted (409) and adopts it.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..clock import Backoff, Clock
from ..datadir import REASON_SUFFIX
from ..errors import SetupError
from ..writer import closed_files_in
from .bigquery import BigQueryTarget, classify, missing_role
from .errors import AccessDenied, JobFailed, PermanentError, StaleJobId, TransientError
from .hours import (
    COLUMNS,
    DEVICE_COLUMN,
    FAILED_DIR,
    HourFile,
    csv_body,
    day_groups,
    hour_files,
    job_id_for,
    readable_rows,
)
from .ledger import Ledger
from .sink import HourSink, Outage

log = logging.getLogger(__name__)

# One load job holds at most one UTC day of one meter, and at most this much CSV.
BATCH_MAX_BYTES = 16 * 1024 * 1024


@dataclass
class UploadStats:
    uploaded: int = 0  # hours
    rows: int = 0
    jobs: int = 0  # load jobs that loaded a batch
    skipped: int = 0
    failed: int = 0
    retries: int = 0
    last_upload: Optional[dt.datetime] = None  # host UTC time of the last successful load (for /metrics)


Outcome = str  # "uploaded", "skipped", "failed", "retry"
MAX_ATTEMPTS = 50  # failed jobs of one batch before the uploader stops trying new ids for it


@dataclass(frozen=True)
class Batch:
    """Hours of one meter and one day, read for one load job: their CSV, and per hour its rows and source."""

    hours: Tuple[HourFile, ...]
    body: bytes
    rows: Dict[str, int]
    sources: Dict[str, str]

    @property
    def span(self) -> str:
        first, last = self.hours[0].key, self.hours[-1].key
        return first if first == last else f"{first} .. {last} ({len(self.hours)} hours)"


class Uploader(HourSink):
    """Uploads closed hours oldest first, a day of one meter per load job; a failing file never
    blocks the ones after it."""

    label = "upload"

    def __init__(
        self,
        data_dir: Path,
        target: Optional[BigQueryTarget],
        clock: Clock,
        *,
        max_backoff: float = 3600.0,
        batch_max_bytes: int = BATCH_MAX_BYTES,
        devices: Optional[Dict[str, str]] = None,
    ) -> None:
        self.data_dir = data_dir
        self.devices = devices or {}  # file suffix -> the device column's value (identity.device_values)
        self.target = target
        self.clock = clock
        self.ledger = Ledger(data_dir)
        self.backoff = Backoff(1.0, max_backoff)
        self.batch_max_bytes = batch_max_bytes
        self.stats = UploadStats()
        self._queued: Dict[str, HourFile] = {}
        self._next_try = 0.0
        self.outage = Outage(clock, self.label, "BigQuery")
        # Hours of a batch BigQuery rejected: each is loaded alone, so only the bad one fails.
        self._single: Set[str] = set()

    # --- one batch ---------------------------------------------------------------------

    def upload_group(self, group: Sequence[HourFile]) -> Tuple[Dict[str, Outcome], int]:
        """Load the first batch of ``group`` (one meter, one day): each settled hour's outcome, and
        the rows loaded. Hours missing from the answer are left for the next batch."""
        outcomes: Dict[str, Outcome] = {}
        fresh = []
        for hour_file in group:
            if hour_file.key in self.ledger:  # loaded before: never again
                outcomes[hour_file.key] = "skipped"
                self.stats.skipped += 1
            else:
                fresh.append(hour_file)
        if not fresh:
            return outcomes, 0
        try:
            columns = self._columns()
            batch = self._read_batch(fresh, columns, outcomes)
            if batch is None:
                return outcomes, 0
            settled, loaded = self._load_batch(batch)
        except TransientError as exc:
            self._waiting(exc, fresh[0].key)
            outcomes.update({h.key: "retry" for h in fresh if h.key not in outcomes})
            return outcomes, 0
        outcomes.update(settled)
        return outcomes, loaded

    def _read_batch(self, hours: Sequence[HourFile], columns: List[str], outcomes: Dict[str, Outcome],
                    ) -> Optional[Batch]:
        """Read hours in order up to the size cap; an unreadable hour goes to failed/ on the way."""
        device = self._device(hours[0])
        taken: List[HourFile] = []
        bodies: List[bytes] = []
        rows: Dict[str, int] = {}
        sources: Dict[str, str] = {}
        size = 0
        for hour_file in hours:
            if taken and (hour_file.key in self._single or taken[0].key in self._single):
                break
            try:
                source, hour_rows = readable_rows(hour_file)
                body = csv_body(hour_rows, columns, device)
            except PermanentError as exc:
                self._fail(hour_file, str(exc))
                outcomes[hour_file.key] = "failed"
                continue
            if taken and size + len(body) > self.batch_max_bytes:
                break
            taken.append(hour_file)
            bodies.append(body)
            rows[hour_file.key] = len(hour_rows)
            sources[hour_file.key] = source.name
            size += len(body)
        return Batch(tuple(taken), b"".join(bodies), rows, sources) if taken else None

    def _load_batch(self, batch: Batch) -> Tuple[Dict[str, Outcome], int]:
        """Write the batch ahead into the ledger, run its job, credit its hours in one write."""
        for attempt in range(MAX_ATTEMPTS):
            job_id = job_id_for(self.target.table_ref, batch.hours, batch.body, attempt)
            record = self._ahead_record(batch)
            clash = self.ledger.begin(job_id, record)
            if clash:  # another process loaded or holds these hours meanwhile
                return {k: "skipped" if k in self.ledger else "retry" for k in clash}, 0
            try:
                loaded = self._run_job(job_id, batch.body)
            except StaleJobId:
                self.ledger.abort(job_id)
                continue
            except (JobFailed, PermanentError) as exc:
                self.ledger.abort(job_id)
                return self._rejected(batch, exc), 0
            # a TransientError leaves the batch written ahead: the next step resolves it
            self._credit(job_id, record, loaded)
            return {h.key: "uploaded" for h in batch.hours}, loaded
        raise TransientError(f"{MAX_ATTEMPTS} load jobs for {batch.span} failed")

    def _run_job(self, job_id: str, body: bytes) -> int:
        if not body:
            return 0  # hours without rows: nothing to load, nothing to wait for
        job = self._call(lambda: self.target.submit(body, job_id))
        if job is None:
            raise TransientError(f"job {job_id} exists but cannot be read yet")
        return self._call(lambda: self.target.outcome(job))

    def _ahead_record(self, batch: Batch) -> dict:
        return {
            "table": self.target.table_ref,
            "at": self.clock.now().strftime("%Y-%m-%d %H:%M:%S"),
            "hours": {h.key: {"rows": batch.rows[h.key], "source": batch.sources[h.key]} for h in batch.hours},
        }

    def _credit(self, job_id: str, record: dict, loaded: int) -> None:
        """The job succeeded: its hours (exactly those written ahead) go into the ledger."""
        at = self.clock.now().strftime("%Y-%m-%d %H:%M:%S")
        entries = {key: {"job_id": job_id, "rows": hour["rows"], "table": record["table"],
                         "source": hour["source"], "at": at} for key, hour in record["hours"].items()}
        self.ledger.commit(job_id, entries)
        expected = sum(hour["rows"] for hour in record["hours"].values())
        if loaded != expected:
            log.warning("job %s loaded %d rows, its files hold %d", job_id, loaded, expected)
        self.stats.uploaded += len(entries)
        self.stats.rows += loaded
        self.stats.jobs += bool(expected)  # hours without rows need no job
        self.stats.last_upload = self.clock.now()
        keys = sorted(entries)
        span = keys[0] if len(keys) == 1 else f"{keys[0]} .. {keys[-1]} ({len(keys)} hours)"
        log.info("uploaded %s: %d rows into %s", span, loaded, record["table"])
        for key in keys:
            self._queued.pop(key, None)
            self._single.discard(key)
        for hour_file in hour_files(closed_files_in(self.data_dir / FAILED_DIR)):
            if hour_file.key in entries:
                self._restore_if_failed_before(hour_file)
        self._healed()

    def _rejected(self, batch: Batch, exc: Exception) -> Dict[str, Outcome]:
        """BigQuery refused the batch: try its hours alone, or fail the one hour it held."""
        cause = exc.cause if isinstance(exc, JobFailed) else exc
        if isinstance(cause, TransientError):
            raise cause  # an error inside the job (backendError, accessDenied): all stay queued
        if len(batch.hours) > 1:
            self._single.update(h.key for h in batch.hours)
            log.warning("BigQuery rejected the batch %s (%s): loading its hours one by one", batch.span, cause)
            return {}
        self._fail(batch.hours[0], str(cause))
        return {batch.hours[0].key: "failed"}

    # --- batches written ahead by an earlier run ---------------------------------------------

    def resolve_pending(self) -> bool:
        """Settle every batch written ahead and not credited (a crash, a SIGKILL, another process):
        True when none is left, False when BigQuery cannot say yet."""
        for job_id, record in sorted(self.ledger.pending().items()):
            if not self._resolve(job_id, record):
                return False
        return True

    def _resolve(self, job_id: str, record: dict) -> bool:
        keys = sorted(record["hours"])
        try:
            job = self._call(lambda: self.target.find_job(job_id))
            if job is None:  # written ahead, never submitted: submit it now, under the same id
                body = self._reread(keys)
                if body is None:
                    raise PermanentError("its files are no longer all there")
                log.info("batch %s from an earlier run never reached BigQuery: sending it now", job_id)
                loaded = self._run_job(job_id, body)
            else:
                log.info("batch %s from an earlier run is in BigQuery: crediting its %d hour(s)", job_id, len(keys))
                loaded = self._call(lambda: self.target.outcome(job))
        except (JobFailed, PermanentError, StaleJobId) as exc:
            self.ledger.abort(job_id)
            log.warning("batch %s from an earlier run loaded nothing (%s): its %d hour(s) are queued again",
                        job_id, exc, len(keys))
            self.queue([h for h in self.backlog() if h.key in record["hours"]])
            return True
        except TransientError as exc:
            self._waiting(exc, keys[0])
            return False
        self._credit(job_id, record, loaded)
        return True

    def _reread(self, keys: List[str]) -> Optional[bytes]:
        """The CSV a pending batch was built from, read again from its files; None if one is gone."""
        found = {h.key: h for h in hour_files(closed_files_in(self.data_dir)) if h.key in keys}
        if len(found) != len(keys):
            return None
        columns = self._columns()
        device = self._device(found[keys[0]])
        return b"".join(csv_body(readable_rows(found[k])[1], columns, device) for k in keys)

    def _device(self, hour_file: HourFile) -> str:
        """The device column of a meter's rows: as the config names it, else from the file name."""
        return self.devices.get(hour_file.meter_suffix) or hour_file.meter_suffix or "wattchecker"

    # --- errors ---------------------------------------------------------------------------

    def _waiting(self, exc: TransientError, key: str) -> None:
        """Log once per outage (and once more if access is denied in it); count every retry."""
        self.stats.retries += 1
        denied = (f"BigQuery denied access (403): the service account likely lacks "
                  f"{missing_role(exc, self.target.project, self.target.config.dataset_id)}; "
                  f"hours stay queued and are retried with backoff: {exc}") if isinstance(exc, AccessDenied) else ""
        self.outage.waiting(exc, key, denied)

    def _healed(self) -> None:
        self.outage.over()

    def _restore_if_failed_before(self, hour_file: HourFile) -> None:
        """A file re-sent from failed/ goes back beside the others, its .reason removed."""
        failed = self.data_dir / FAILED_DIR
        resent = (failed / f"{hour_file.key}{REASON_SUFFIX}").exists()  # the hour failed, and was sent again
        for path in hour_file.sources:
            marker = path.with_name(path.name + REASON_SUFFIX)  # quarantined as damaged: it stays unless re-sent
            if path.parent == failed and path.exists() and (resent or not marker.exists()):
                shutil.move(str(path), str(self.data_dir / path.name))
                marker.unlink(missing_ok=True)
        (failed / f"{hour_file.key}.reason").unlink(missing_ok=True)

    def _columns(self) -> List[str]:
        """The table's columns; one this client does not write is the table's fault, never a file's."""
        columns = [f.name for f in self._table().schema]
        unknown = [c for c in columns if c not in COLUMNS and c != DEVICE_COLUMN]
        if unknown:
            raise TransientError(f"table {self.target.table_ref} has columns this client does not write: "
                                 f"{', '.join(unknown)}; hours stay queued until the table is fixed")
        return columns

    def _table(self):
        """The table; trouble reaching or creating it is never the file's fault: retry later."""
        try:
            return self._call(self.target.table)
        except PermanentError as exc:
            raise TransientError(f"cannot use table {self.target.table_ref}: {exc}") from None

    def _call(self, action: Callable[[], object]):
        """Run a BigQuery action, turning every error into Transient- or PermanentError."""
        try:
            return action()
        except (TransientError, PermanentError, SetupError, JobFailed, StaleJobId):
            raise
        except Exception as exc:
            raise classify(exc) from None

    def _fail(self, hour_file: HourFile, reason: str) -> None:
        """Move every file of the hour to failed/ with a .reason beside them."""
        failed = self.data_dir / FAILED_DIR
        failed.mkdir(exist_ok=True)
        for path in hour_file.sources:
            if path.exists():
                shutil.move(str(path), str(failed / path.name))
        (failed / f"{hour_file.key}.reason").write_text(reason + "\n", encoding="utf-8")
        self.stats.failed += 1
        self._single.discard(hour_file.key)
        log.error("cannot upload %s, moved to %s: %s", hour_file.key, failed, reason)

    # --- the thread -----------------------------------------------------------------------

    def step(self) -> bool:
        """Load the oldest queued day's next batch if its time has come; True if there is more to do now."""
        if not self._queued or self.clock.monotonic() < self._next_try:
            return False
        self.ledger.reload()
        if not self.resolve_pending():
            self._next_try = self.clock.monotonic() + self.backoff.next_delay()
            return False
        for key in [k for k in self._queued if k in self.ledger]:  # credited by another process
            del self._queued[key]
        if not self._queued:
            return False
        outcomes, _ = self.upload_group(day_groups(list(self._queued.values()))[0])
        if "retry" in outcomes.values():
            self._next_try = self.clock.monotonic() + self.backoff.next_delay()
            return False
        for key in outcomes:
            self._queued.pop(key, None)
        self.backoff.reset()
        return bool(self._queued)
