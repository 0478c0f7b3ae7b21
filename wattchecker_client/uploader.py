"""Closed hour files -> BigQuery load jobs: each hour lands exactly once, through any outage.

The unit of upload is one meter's closed hour (or late part of one), keyed by
its name without the format: ``wattchecker-data.2019-09-07_09``. Its rows are
read from the JSON file when there is one (full precision), else from the CSV
file, and sent as uncompressed CSV in the table's own column order.

Exactly once: the load job's id is derived from the table, the key and a hash
of the rows sent, so a retry after a crash finds the job it already submitted
(409) and adopts its outcome instead of loading again; every success is
recorded in a ledger (``uploaded.json``) that is never uploaded from twice.
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
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .clock import Clock
from .config import BigQueryConfig
from .meter import Backoff
from .transport import SetupError
from .writer import HOUR_FORMAT, ClosedFile, atomic_write, closed_files_in, open_text, parse_closed

log = logging.getLogger(__name__)

LEDGER_NAME = "uploaded.json"
FAILED_DIR = "failed"
COLUMNS = ("datetime", "V", "mA", "W")
DEVICE_COLUMN = "device"
API_TIMEOUT = 60.0
# Quick retries inside one call; longer outages are the uploader's backoff.
RETRY_DEADLINE = 15.0
JOB_TIMEOUT = 600.0


class PermanentError(Exception):
    """This file can never load as it is: it goes to failed/ with the reason."""


class TransientError(Exception):
    """Not now: the file stays queued and is retried after a backoff."""


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


def job_id_for(table: str, hour_file: HourFile, body: bytes) -> str:
    """Deterministic: the same rows for the same hour and table give the same job."""
    digest = hashlib.sha256(body).hexdigest()[:16]
    raw = f"wattchecker_{table}_{hour_file.key}_{digest}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)[:1024]


# --- the ledger ----------------------------------------------------------------


class Ledger:
    """Which hours are in BigQuery: a JSON file, written atomically under a lock.

    The lock lets a running daemon and `wattchecker-client upload` share it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LEDGER_NAME
        self._lock_path = data_dir / (LEDGER_NAME + ".lock")
        self._entries: Dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self._entries = dict(data.get("uploaded", {}))
        except FileNotFoundError:
            self._entries = {}
        except (ValueError, AttributeError) as exc:
            # Starting afresh is safe: job ids are deterministic, so an hour
            # already in BigQuery is found (409) and adopted, never loaded twice.
            aside = self.path.with_name(LEDGER_NAME + ".unreadable")
            os.replace(self.path, aside)
            log.error("%s was unreadable (%s): moved to %s; rebuilding it from BigQuery's jobs",
                      self.path, exc, aside.name)
            self._entries = {}

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Optional[dict]:
        return self._entries.get(key)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def record(self, key: str, entry: dict) -> None:
        with self._locked():
            self.reload()
            self._entries[key] = entry
            body = json.dumps({"version": 1, "uploaded": self._entries}, indent=1, sort_keys=True)
            atomic_write(self.path, body.encode("utf-8"), compress=False)


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
    if isinstance(exc, (api.BadRequest, api.Forbidden)):
        return PermanentError(message)
    if type(exc).__module__.startswith(("requests", "urllib3", "google.auth")):
        return TransientError(message)
    # Anything else (a new error type, a bug): keep the file; a wrong guess here
    # must cost a retry, never a file.
    return TransientError(message)


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
        if mode & 0o077:
            warn(f"{path} is readable by other users (mode {mode & 0o777:o}): chmod 600 it")
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
        schema = [field("datetime", "TIMESTAMP")] + [field(c, "FLOAT") for c in COLUMNS[1:]]
        if self.several_meters:
            schema.append(field(DEVICE_COLUMN, "STRING"))
        return schema

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
            table = self.bigquery.Table(self.table_ref, schema=self.schema_for_new_table())
            self._table = self.client.create_table(table, exists_ok=True, retry=retry, timeout=API_TIMEOUT)
            log.info("created table %s", self.table_ref)
        return self._table

    def _retry(self):
        from google.cloud.bigquery.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_deadline(self.retry_deadline)

    def load_config(self, schema) -> object:
        return load_job_config(self.bigquery, schema)

    def load(self, body: bytes, job_id: str) -> int:
        """Run (or adopt) the load job ``job_id``; the number of rows it loaded."""
        from google.api_core import exceptions as api

        table = self.table()
        try:
            job = self.client.load_table_from_file(
                io.BytesIO(body), table, job_id=job_id, job_config=self.load_config(table.schema),
                location=self.config.location, timeout=API_TIMEOUT, rewind=True,
            )
        except api.Conflict:
            log.info("job %s already exists (an earlier attempt): adopting its outcome", job_id)
            job = self.client.get_job(job_id, location=self.config.location, retry=self._retry(),
                                      timeout=API_TIMEOUT)
        job.result(timeout=JOB_TIMEOUT)
        return int(job.output_rows or 0)


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
    uploaded: int = 0
    rows: int = 0
    skipped: int = 0
    failed: int = 0
    retries: int = 0
    deleted: int = 0
    last_upload: Optional[dt.datetime] = None  # host UTC time of the last successful load (for /metrics)


Outcome = str  # "uploaded", "skipped", "failed", "retry"


class Uploader:
    """Uploads closed hours oldest first; a failing file never blocks the ones after it."""

    def __init__(
        self,
        data_dir: Path,
        target: Optional[BigQueryTarget],
        clock: Clock,
        *,
        max_backoff: float = 3600.0,
        retention_days: Optional[int] = None,
    ) -> None:
        self.data_dir = data_dir
        self.target = target
        self.clock = clock
        self.ledger = Ledger(data_dir)
        self.backoff = Backoff(1.0, max_backoff)
        self.retention_days = retention_days
        self.stats = UploadStats()
        self._queued: Dict[str, HourFile] = {}
        self._next_try = 0.0
        self._outage_since: Optional[float] = None

    def backlog(self) -> List[HourFile]:
        """Closed hours in the data dir that the ledger does not hold, oldest first."""
        return [h for h in hour_files(closed_files_in(self.data_dir)) if h.key not in self.ledger]

    def queue(self, files: Sequence[HourFile]) -> None:
        for hour_file in files:
            self._queued.setdefault(hour_file.key, hour_file)

    def announced(self, closed: ClosedFile) -> None:
        """The writer closed a file: queue its hour, with every format present now."""
        parsed = parse_closed(closed.path)
        if parsed is None:
            return
        key = hour_key(parsed[0], parsed[2], parsed[3])
        self._queued.pop(key, None)
        for hour_file in hour_files(closed_files_in(self.data_dir)):
            if hour_file.key == key and key not in self.ledger:
                self._queued[key] = hour_file

    @property
    def pending(self) -> int:
        return len(self._queued)

    def upload(self, hour_file: HourFile) -> Tuple[Outcome, int]:
        """One hour: ('uploaded'|'skipped'|'failed'|'retry', rows)."""
        if hour_file.key in self.ledger:
            self.stats.skipped += 1
            return "skipped", 0
        try:
            source, rows = readable_rows(hour_file)
            table = self._table()
            columns = [f.name for f in table.schema]
            body = csv_body(rows, columns, hour_file.meter_suffix or "wattchecker")
            job_id = job_id_for(self.target.table_ref, hour_file, body)
            loaded = self._call(lambda: self.target.load(body, job_id)) if body else 0
        except PermanentError as exc:
            self._fail(hour_file, str(exc))
            return "failed", 0
        except TransientError as exc:
            self.stats.retries += 1
            if self._outage_since is None:
                self._outage_since = self.clock.monotonic()
                log.warning("upload of %s must wait: %s; will retry", hour_file.key, exc)
            else:
                log.debug("upload of %s still waiting: %s", hour_file.key, exc)
            return "retry", 0
        if self._outage_since is not None:
            log.info("BigQuery reachable again after %.0f s", self.clock.monotonic() - self._outage_since)
            self._outage_since = None
        self.ledger.record(hour_file.key, {
            "job_id": job_id, "rows": loaded, "table": self.target.table_ref, "source": source.name,
            "at": self.clock.now().strftime("%Y-%m-%d %H:%M:%S"),
        })
        self.stats.uploaded += 1
        self.stats.rows += loaded
        self.stats.last_upload = self.clock.now()
        log.info("uploaded %s: %d rows into %s", hour_file.key, loaded, self.target.table_ref)
        self._restore_if_failed_before(hour_file)
        return "uploaded", loaded

    def _restore_if_failed_before(self, hour_file: HourFile) -> None:
        """A file re-sent from failed/ goes back beside the others, its .reason removed."""
        failed = self.data_dir / FAILED_DIR
        for path in hour_file.sources:
            if path.parent == failed and path.exists():
                shutil.move(str(path), str(self.data_dir / path.name))
        (failed / f"{hour_file.key}.reason").unlink(missing_ok=True)

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
        except (TransientError, PermanentError, SetupError):
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
        log.error("cannot upload %s, moved to %s: %s", hour_file.key, failed, reason)

    def step(self) -> bool:
        """Try the oldest queued hour if its time has come; True if there is more to do now."""
        if not self._queued or self.clock.monotonic() < self._next_try:
            return False
        key = min(self._queued, key=lambda k: (self._queued[k].hour, self._queued[k].part, k))
        outcome, _ = self.upload(self._queued[key])
        if outcome == "retry":
            self._next_try = self.clock.monotonic() + self.backoff.next_delay()
            return False
        del self._queued[key]
        self.backoff.reset()
        return bool(self._queued)

    def delete_expired(self) -> None:
        """Retention: closed hours older than N days, once uploaded (or when not uploading)."""
        if self.retention_days is None:
            return
        cutoff = self.clock.now() - dt.timedelta(days=self.retention_days)
        for hour_file in hour_files(closed_files_in(self.data_dir)):
            if hour_file.hour + dt.timedelta(hours=1) > cutoff:
                continue
            if self.target is not None and hour_file.key not in self.ledger:
                continue
            for path in hour_file.sources:
                path.unlink(missing_ok=True)
            self.stats.deleted += 1
            log.info("retention: deleted %s (older than %d days)", hour_file.key, self.retention_days)

    def run(self, closed_files: "queue.Queue[ClosedFile]", stop: threading.Event) -> None:
        """The uploader thread: the backlog first, then each hour as the writer closes it."""
        if self.target is not None:
            self.queue(self.backlog())
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
