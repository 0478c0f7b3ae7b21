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

import contextlib
import datetime as dt
import fcntl
import gzip
import hashlib
import io
import json
import logging
import os
import queue
import re
import shutil
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .clock import Backoff, Clock
from .config import BigQueryConfig
from .datadir import closed_name, private_file, summarize_closed_hours
from .errors import SetupError
from .secretfile import others_may_read
from .writer import (
    HOUR_FORMAT,
    ClosedFile,
    atomic_write,
    closed_files_in,
    hour_of,
    line_stamp,
    open_text,
    parse_closed,
    parse_stamp,
)

log = logging.getLogger(__name__)

LEDGER_NAME = "uploaded.json"
JOURNAL_NAME = LEDGER_NAME + ".journal"
FAILED_DIR = "failed"
COLUMNS = ("datetime", "V", "mA", "W")
PLAIN_RE = re.compile(r"^(?P<stem>.+)\.(csv|json)$")  # the writer's current hour
DEVICE_COLUMN = "device"
API_TIMEOUT = 60.0
# The request that carries a batch's rows: up to a day of them on a slow uplink.
UPLOAD_TIMEOUT = 300.0
# One load job holds at most one UTC day of one meter, and at most this much CSV.
BATCH_MAX_BYTES = 16 * 1024 * 1024
# Quick retries inside one call; longer outages are the uploader's backoff.
RETRY_DEADLINE = 15.0
JOB_TIMEOUT = 600.0


class PermanentError(Exception):
    """This file can never load as it is: it goes to failed/ with the reason."""


class TransientError(Exception):
    """Not now: the file stays queued and is retried after a backoff."""


class AccessDenied(TransientError):
    """A 403 that is no rate limit: a role is missing. The credentials' fault, never a file's."""


class JobFailed(Exception):
    """The load job ran and failed: it loaded nothing, and its id cannot be used again."""

    def __init__(self, job_id: str, cause: Exception) -> None:
        super().__init__(f"load job {job_id} failed: {cause}")
        self.job_id = job_id
        self.cause = cause  # TransientError or PermanentError


class StaleJobId(Exception):
    """A job with this id failed before (an earlier attempt): the next attempt needs a new id."""


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


def read_rows(path: Path) -> List[Dict[str, str]]:
    """The rows of one closed file as text fields; full float precision from JSON."""
    parsed = parse_closed(path)
    is_json = parsed is not None and parsed[1] == "json"
    rows = []
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            try:
                if is_json:
                    obj = json.loads(line)
                    rows.append({"datetime": obj["datetime"], "V": repr(float(obj["V"])),
                                 "mA": repr(float(obj["mA"])), "W": repr(float(obj["W"]))})
                else:
                    stamp, volts, milliamps, watts = line.rstrip("\n").split(",")
                    rows.append({"datetime": stamp, "V": volts, "mA": milliamps, "W": watts})
            except (ValueError, KeyError, TypeError) as exc:
                raise PermanentError(f"{path.name}: line {number} is not a row: {exc}") from None
    return rows


def readable_rows(hour_file: HourFile) -> Tuple[Path, List[Dict[str, str]]]:
    """Rows from the most precise file that reads cleanly; PermanentError if none does."""
    problems = []
    for path in hour_file.sources:
        try:
            return path, read_rows(path)
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError) as exc:
            problems.append(f"{path.name}: unreadable ({exc})")
        except PermanentError as exc:
            problems.append(str(exc))
    raise PermanentError("; ".join(problems))


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


# --- the ledger ----------------------------------------------------------------


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

    def __init__(self, data_dir: Path, compact: bool = True) -> None:
        self.path = data_dir / LEDGER_NAME
        self.journal = data_dir / JOURNAL_NAME
        self._lock_path = data_dir / (LEDGER_NAME + ".lock")
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
            aside = self.path.with_name(LEDGER_NAME + ".unreadable")
            os.replace(self.path, aside)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.journal, self.journal.with_name(JOURNAL_NAME + ".unreadable"))
            log.error("%s was unreadable (%s): moved to %s; rebuilding it from BigQuery's jobs",
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


# --- BigQuery ----------------------------------------------------------------------


def classify(exc: BaseException) -> Exception:
    """Map a client-library or network error to TransientError or PermanentError."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    reasons = {e.get("reason") for e in getattr(exc, "errors", None) or [] if isinstance(e, dict)}
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (api.TooManyRequests, api.ServerError, api.RetryError, auth.TransportError,
                        ConnectionError, TimeoutError, OSError)):
        return TransientError(message)
    if isinstance(exc, api.Forbidden) and reasons & {"rateLimitExceeded", "quotaExceeded", "backendError"}:
        return TransientError(message)
    if isinstance(exc, api.Forbidden):  # accessDenied, a missing role: fixed in IAM, not in the file
        return AccessDenied(message)
    if isinstance(exc, api.BadRequest):
        return PermanentError(message)
    if type(exc).__module__.startswith(("requests", "urllib3", "google.auth")):
        return TransientError(message)
    # Anything else (a new error type, a bug): keep the file; a wrong guess here
    # must cost a retry, never a file.
    return TransientError(message)


def missing_role(error: AccessDenied, project: str, dataset: str) -> str:
    """The role a 403 most likely lacks: creating jobs needs Job User, touching the table Data Editor."""
    if "jobs.create" in str(error):
        return f"BigQuery Job User (roles/bigquery.jobUser) on project {project}"
    return f"BigQuery Data Editor (roles/bigquery.dataEditor) on dataset {project}.{dataset}"


def bigquery_library():
    """google.cloud.bigquery, imported only when a bigquery: section asks for it."""
    try:
        from google.cloud import bigquery
    except ImportError:
        raise SetupError(
            "bigquery: is configured but google-cloud-bigquery is not installed: "
            "pip install 'google-cloud-bigquery>=3'"
        ) from None
    return bigquery


def credentials_and_project(config: BigQueryConfig, warn: Callable[[str], None]) -> Tuple[object, str]:
    """The key file's credentials (None: Application Default Credentials) and the project.

    SetupError for a key that is missing, unreadable or not a key, or no
    project; ``warn`` for a key other users can read. Nothing of the key is logged.
    """
    path = config.service_account_json
    credentials, project = None, None
    if path is not None:
        try:
            mode = path.stat().st_mode
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise SetupError(f"bigquery.service_account_json: cannot read {path}: {exc.strerror or exc}") from None
        if others_may_read(path, mode):
            warn(others_may_read(path, mode))
        from google.oauth2 import service_account

        try:
            credentials = service_account.Credentials.from_service_account_file(
                str(path), scopes=["https://www.googleapis.com/auth/bigquery"]
            )
        except (ValueError, KeyError) as exc:
            raise SetupError(f"bigquery.service_account_json: {path} is not a service account key: {exc}") from None
        project = credentials.project_id
    elif config.api_endpoint:
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    project = config.project_id or project
    if not project:
        raise SetupError("bigquery.project_id: missing, and the credentials name no project")
    return credentials, project


def check_setup(config: BigQueryConfig) -> List[str]:
    """What start-up checks of a bigquery: section, without a client or a network call.

    Raises SetupError (one line) where start-up would stop; returns warnings.
    ``check-config`` runs it through ``daemon.preflight``.
    """
    warnings: List[str] = []
    bigquery_library()
    credentials_and_project(config, warnings.append)
    return warnings


class BigQueryTarget:
    """The configured table, through google-cloud-bigquery (imported only here)."""

    def __init__(self, config: BigQueryConfig, several_meters: bool, retry_deadline: float = RETRY_DEADLINE) -> None:
        bigquery = self.bigquery = bigquery_library()
        self.config = config
        self.several_meters = several_meters
        self.retry_deadline = retry_deadline
        credentials, self.project = credentials_and_project(config, log.warning)
        options = {"api_endpoint": config.api_endpoint} if config.api_endpoint else None
        self.client = bigquery.Client(
            project=self.project, credentials=credentials, location=config.location, client_options=options
        )
        self.table_ref = f"{self.project}.{config.dataset_id}.{config.table_id}"
        self._table = None

    def schema_for_new_table(self) -> list:
        field = self.bigquery.SchemaField
        # Always a device column: other Pis may load into the same table (README "Several Pis").
        return [field("datetime", "TIMESTAMP")] + [field(c, "FLOAT") for c in COLUMNS[1:]] + [
            field(DEVICE_COLUMN, "STRING")]

    def table(self):
        """The table (cached); created with its dataset when missing and allowed."""
        if self._table is not None:
            return self._table
        from google.api_core import exceptions as api

        retry = self._retry()
        try:
            self._table = self.client.get_table(self.table_ref, retry=retry, timeout=API_TIMEOUT)
        except api.NotFound:
            if not self.config.create_table:
                raise TransientError(
                    f"table {self.table_ref} does not exist: create it (README) or set bigquery.create_table: true"
                ) from None
            dataset = self.bigquery.Dataset(f"{self.project}.{self.config.dataset_id}")
            dataset.location = self.config.location
            self.client.create_dataset(dataset, exists_ok=True, retry=retry, timeout=API_TIMEOUT)
            self.client.query(self.new_table_ddl(), location=self.config.location, retry=retry,
                              timeout=API_TIMEOUT, job_id_prefix="wattchecker_create_table_").result(timeout=JOB_TIMEOUT)
            self._table = self.client.get_table(self.table_ref, retry=retry, timeout=API_TIMEOUT)
            log.info("created table %s", self.table_ref)
        return self._table

    def new_table_ddl(self) -> str:
        """Partitioned by day on ``datetime``, so a day's query reads one partition, not years of
        rows; clustered by ``device``, as several meters or Pis may share the table."""
        types = {"TIMESTAMP": "TIMESTAMP", "FLOAT": "FLOAT64", "STRING": "STRING"}
        columns = ", ".join(f"`{f.name}` {types[f.field_type]}" for f in self.schema_for_new_table())
        sql = f"CREATE TABLE IF NOT EXISTS `{self.table_ref}` ({columns}) PARTITION BY TIMESTAMP_TRUNC(`datetime`, DAY)"
        return sql + f" CLUSTER BY `{DEVICE_COLUMN}`"

    def _retry(self):
        from google.cloud.bigquery.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_deadline(self.retry_deadline)

    def load_config(self, schema) -> object:
        return load_job_config(self.bigquery, schema)

    def submit(self, body: bytes, job_id: str):
        """Start the load job ``job_id``, or adopt it if it exists (an earlier attempt's).

        StaleJobId if the existing job failed: its id is used up.
        """
        from google.api_core import exceptions as api

        table = self.table()
        try:
            return self.client.load_table_from_file(
                io.BytesIO(body), table, job_id=job_id, job_config=self.load_config(table.schema),
                location=self.config.location, timeout=UPLOAD_TIMEOUT, rewind=True,
            )
        except api.Conflict:
            job = self.find_job(job_id)
            if job is not None and job.state == "DONE" and job.error_result:
                raise StaleJobId(job_id) from None
            log.info("job %s already exists (an earlier attempt): adopting its outcome", job_id)
            return job

    def find_job(self, job_id: str):
        """The job ``job_id``, or None if BigQuery never received it."""
        from google.api_core import exceptions as api

        try:
            return self.client.get_job(job_id, location=self.config.location, retry=self._retry(),
                                       timeout=API_TIMEOUT)
        except api.NotFound:
            return None

    def outcome(self, job) -> int:
        """Wait for ``job``; the rows it loaded. JobFailed if it ran and failed."""
        try:
            job.result(timeout=JOB_TIMEOUT)
        except Exception as exc:
            if job.state == "DONE" and job.error_result:
                raise JobFailed(job.job_id, classify(exc)) from None
            raise
        return int(job.output_rows or 0)

    def load(self, body: bytes, job_id: str) -> int:
        """Run (or adopt) the load job ``job_id``; the number of rows it loaded."""
        return self.outcome(self.submit(body, job_id))


def load_job_config(bigquery, schema) -> object:
    """CSV, no header, the table's own schema: works for TIMESTAMP and DATETIME columns alike."""
    return bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.CSV,
        schema=schema,
        skip_leading_rows=0,
        write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
    )


# --- the uploader -----------------------------------------------------------------


@dataclass
class UploadStats:
    uploaded: int = 0  # hours
    rows: int = 0
    jobs: int = 0  # load jobs that loaded a batch
    skipped: int = 0
    failed: int = 0
    retries: int = 0
    deleted: int = 0
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


class Uploader:
    """Uploads closed hours oldest first, a day of one meter per load job; a failing file never
    blocks the ones after it."""

    def __init__(
        self,
        data_dir: Path,
        target: Optional[BigQueryTarget],
        clock: Clock,
        *,
        max_backoff: float = 3600.0,
        retention_days: Optional[int] = None,
        batch_max_bytes: int = BATCH_MAX_BYTES,
        devices: Optional[Dict[str, str]] = None,
    ) -> None:
        self.data_dir = data_dir
        self.devices = devices or {}  # file suffix -> the device column's value (identity.device_values)
        self.target = target
        self.clock = clock
        self.ledger = Ledger(data_dir)
        self.backoff = Backoff(1.0, max_backoff)
        self.retention_days = retention_days
        self.batch_max_bytes = batch_max_bytes
        self.stats = UploadStats()
        self._queued: Dict[str, HourFile] = {}
        self._next_try = 0.0
        self._outage_since: Optional[float] = None
        self._outage_logged: Set[str] = set()
        # Hours of a batch BigQuery rejected: each is loaded alone, so only the bad one fails.
        self._single: Set[str] = set()

    def backlog(self, settled_only: bool = False) -> List[HourFile]:
        """Closed hours in the data dir that the ledger does not hold, oldest first.

        ``settled_only``: without the hours the writer is closing in another format right
        now; the running service hears of those once every format is closed.
        """
        hours = [h for h in hour_files(closed_files_in(self.data_dir)) if h.key not in self.ledger]
        if settled_only:
            closing = open_hours(self.data_dir)
            hours = [h for h in hours if (h.stem, h.hour) not in closing]
        return hours

    def queue(self, files: Sequence[HourFile]) -> None:
        for hour_file in files:
            self._queued.setdefault(hour_file.key, hour_file)

    def announced(self, closed: ClosedFile) -> None:
        """The writer closed a file: queue its hour, with every format present now."""
        parsed = parse_closed(closed.path)
        if parsed is None:
            return
        stem, _, hour, part = parsed
        key = hour_key(stem, hour, part)
        self._queued.pop(key, None)
        # the hour's formats by name and a stat each: a listing per file grew with the years of files
        present = [p for p in (self.data_dir / closed_name(stem, fmt, hour, part) for fmt in ("json", "csv")) if p.exists()]
        for hour_file in hour_files(present):
            if key not in self.ledger:
                self._queued[key] = hour_file

    @property
    def pending(self) -> int:
        return len(self._queued)

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
        if self._outage_since is None:
            self._outage_since = self.clock.monotonic()
        kind = "denied" if isinstance(exc, AccessDenied) else "waiting"
        if kind in self._outage_logged:
            log.debug("upload of %s still waiting: %s", key, exc)
        elif isinstance(exc, AccessDenied):
            log.error("BigQuery denied access (403): the service account likely lacks %s; "
                      "hours stay queued and are retried with backoff: %s",
                      missing_role(exc, self.target.project, self.target.config.dataset_id), exc)
        else:
            log.warning("upload of %s must wait: %s; will retry", key, exc)
        self._outage_logged.add(kind)

    def _healed(self) -> None:
        if self._outage_since is not None:
            log.info("BigQuery reachable again after %.0f s", self.clock.monotonic() - self._outage_since)
        self._outage_since = None
        self._outage_logged.clear()

    def _restore_if_failed_before(self, hour_file: HourFile) -> None:
        """A file re-sent from failed/ goes back beside the others, its .reason removed."""
        failed = self.data_dir / FAILED_DIR
        for path in hour_file.sources:
            if path.parent == failed and path.exists():
                shutil.move(str(path), str(self.data_dir / path.name))
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

    def delete_expired(self) -> None:
        """Retention: closed hours older than N days, once uploaded (or when not uploading)."""
        if self.retention_days is None:
            return
        cutoff = self.clock.now() - dt.timedelta(days=self.retention_days)
        expired = [h for h in hour_files(closed_files_in(self.data_dir)) if h.hour + dt.timedelta(hours=1) <= cutoff
                   and (self.target is None or h.key in self.ledger)]
        for stem in sorted({h.stem for h in expired}):
            summarize_closed_hours(self.data_dir, stem)  # the report's and the energy's past outlive the rows
        for hour_file in expired:
            for path in hour_file.sources:
                path.unlink(missing_ok=True)
            self.stats.deleted += 1
            log.info("retention: deleted %s (older than %d days)", hour_file.key, self.retention_days)

    def run(self, closed_files: "queue.Queue[ClosedFile]", stop: threading.Event) -> None:
        """The uploader thread: the backlog first, then each hour as the writer closes it."""
        if self.target is not None:
            self.queue(self.backlog(settled_only=True))
            if self._queued:
                log.info("upload backlog: %d hour(s)", len(self._queued))
        next_retention = 0.0
        while not stop.is_set():
            try:
                if self.clock.monotonic() >= next_retention:
                    next_retention = self.clock.monotonic() + 3600
                    self.delete_expired()
                busy = self.target is not None and self.step()
            except Exception:  # a full disk moving a file, ...: log it, wait, go on
                log.exception("uploader step failed; retrying later")
                self._next_try = self.clock.monotonic() + self.backoff.next_delay()
                busy = False
            closed = self.clock.get(closed_files, timeout=0 if busy else 1.0)
            if closed is not None and self.target is not None:
                self.announced(closed)
