"""The BigQuery adapter: credentials, the table, load jobs, and errors mapped to retry or give up.

google-cloud-bigquery is imported only when a target is used."""

from __future__ import annotations

import io
import logging
from typing import Callable, List, Tuple

from ..config import BigQueryConfig
from ..errors import SetupError
from ..secretfile import others_may_read
from .errors import AccessDenied, JobFailed, PermanentError, StaleJobId, TransientError
from .hours import COLUMNS, DEVICE_COLUMN

log = logging.getLogger(__name__)

API_TIMEOUT = 60.0
# The request that carries a batch's rows: up to a day of them on a slow uplink.
UPLOAD_TIMEOUT = 300.0
# Quick retries inside one call; longer outages are the uploader's backoff.
RETRY_DEADLINE = 15.0
JOB_TIMEOUT = 600.0


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
        raise SetupError("is configured but google-cloud-bigquery is not installed: "
                         "pip install 'google-cloud-bigquery>=3'", key="bigquery") from None
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
            raise SetupError(f"cannot read {path}: {exc.strerror or exc}: copy the service account's JSON key "
                             "there, or remove service_account_json to use Application Default Credentials",
                             key="bigquery.service_account_json") from None
        if others_may_read(path, mode):
            warn(others_may_read(path, mode))
        from google.oauth2 import service_account

        try:
            credentials = service_account.Credentials.from_service_account_file(
                str(path), scopes=["https://www.googleapis.com/auth/bigquery"]
            )
        except (ValueError, KeyError) as exc:
            raise SetupError(f"{path} is not a service account key: put the JSON key made for the service "
                             f"account there (IAM -> Service accounts -> Keys -> Add key -> JSON); {exc}",
                             key="bigquery.service_account_json") from None
        project = credentials.project_id
    elif config.api_endpoint:
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    project = config.project_id or project
    if not project:
        raise SetupError("missing, and the credentials name no project: set project_id", key="bigquery.project_id")
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
        # Always a device column: other Pis may load into the same table (docs/several-pis.md).
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
                    f"table {self.table_ref} does not exist: create it (docs/bigquery.md) or set bigquery.create_table: true"
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
